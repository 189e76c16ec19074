"""The session RNN (pure torch, no Spark): recurrent cells, readouts, output heads, save/load, and the MLflow model
that carries it with its item index (`pyfunc`)."""
