"""EF21 building blocks: theory (weights, step sizes), contractive compressors, the client
state and its round, the wire formats, the local problems, a pure-numpy reference loop, and
the feature scale that sets L_QM/L_AM (spread).
The Flower strategy is :class:`fedsim.strategies.ef21w.EF21W`; the client task
``fedsim.clients.ef21``."""
