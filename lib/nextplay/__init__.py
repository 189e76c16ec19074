"""nextplay: predict the next track a listener will play."""
