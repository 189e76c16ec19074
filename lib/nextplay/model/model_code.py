"""The models-from-code entry point MLflow runs when it loads the logged model.

Logging a file instead of a pickled object means nothing is unpickled when MLflow loads the model
(a notebook, `mlflow models predict`, a serving endpoint), and this file only imports the installed
nextplay package. nextplay's own loading does not run even this file: see
`nextplay.model.pyfunc.load_trusted`.
"""
from mlflow.models import set_model

from nextplay.model.pyfunc import NextTrackModel

set_model(NextTrackModel())
