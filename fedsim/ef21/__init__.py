"""EF21 building blocks: theory (weights, step sizes), contractive compressors, the client
state and its round, the wire formats, the local problems, and a pure-numpy reference loop.
The Flower strategy is :class:`fedsim.strategies.ef21w.EF21W`; the client task
``fedsim.clients.ef21``."""
