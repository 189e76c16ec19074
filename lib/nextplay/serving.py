"""The names a logged model imports when MLflow loads it: kept, with their meaning, in every release.

A logged model carries a small models-from-code file (model_code.py, copied into the model at
logging) that MLflow runs on `mlflow.pyfunc.load_model`, `mlflow models serve` and `spark_udf`. What
that file imports is frozen into the registry the moment the model is logged, so it names this
module, never the place the implementation happens to live: moving code inside the package must not
break a champion registered a year ago. Models logged before this module existed name
`nextplay.score.pyfunc`, which stays for them.

What the imported class does with an older model's files (its `model.pt` layout) is model/formats.py's job.
"""
from nextplay.model.pyfunc import NextTrackModel

__all__ = ["NextTrackModel"]
