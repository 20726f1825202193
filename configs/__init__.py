"""The shipped experiment configs, installed as ``fedsim.configs`` so that ``fedsim run`` with no
argument finds the default experiment (``quickstart.yaml``) after a plain ``pip install``."""
