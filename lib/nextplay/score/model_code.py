"""The models-from-code entry point MLflow runs when it loads the logged model.

Logging a file instead of a pickled object means loading a model runs this project's code, not
bytes that happen to be in an artifact store (and the model file itself is read with
`weights_only=True`).
"""
from mlflow.models import set_model

from nextplay.score.pyfunc import NextTrackModel

set_model(NextTrackModel())
