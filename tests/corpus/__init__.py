"""The hostile and broken inputs ssc must survive, generated at test time (see make_corpus)."""
