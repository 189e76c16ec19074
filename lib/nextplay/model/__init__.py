"""The session RNN (pure torch, no Spark): recurrent cells, readouts, output heads, save/load."""
