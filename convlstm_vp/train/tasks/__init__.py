"""Training tasks: each supplies a model, batches and an evaluation to :func:`convlstm_vp.train.fit`."""
