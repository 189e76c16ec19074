"""The models-from-code file MLflow copies into every logged model and runs when it loads one.

Logging a file instead of a pickled object means nothing is unpickled when MLflow loads the model
(a notebook, `mlflow models predict`, a serving endpoint). The file imports only `nextplay.serving`,
the entry point every release keeps, because this text is frozen into the registry with the model.
nextplay's own loading does not run even this file: see `nextplay.model.pyfunc.load_trusted`.
"""
from mlflow.models import set_model

from nextplay.serving import NextTrackModel

set_model(NextTrackModel())
