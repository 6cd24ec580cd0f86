"""Training: the loop (:mod:`~hmpe.engine.train.trainer`), its setup from a config
(:mod:`~hmpe.engine.train.train_setup`), optimiser, schedule and EMA (:mod:`~hmpe.engine.train.optim`),
Ctrl-C and resume (:mod:`~hmpe.engine.train.interrupt`), the run's files (:mod:`~hmpe.engine.train.run_log`)
and start weights for fine-tuning (:mod:`~hmpe.engine.train.transfer`)."""
