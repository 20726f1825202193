"""The run engine: the server loop, the strategy wrapper, the simulation runner."""
