"""The deploy: one procedure (:mod:`~deploykit.deploy.procedure`) and its engines.

- :mod:`~deploykit.deploy.runtime`: the collaborators, built once (``Runtime.create``).
- :mod:`~deploykit.deploy.release`: the release value (tag + digest) and what runs.
- :mod:`~deploykit.deploy.procedure`: ``Deployment``, the phases, whatever the engine.
- :mod:`~deploykit.deploy.report`: what every engine records (outputs, history, GitHub,
  smoke test, summary, the endings).
- :mod:`~deploykit.deploy.engine`: the ``Engine`` interface; its implementations
  :mod:`~deploykit.deploy.compose_engine` (recreate) and :mod:`~deploykit.deploy.swarm_engine`.

This package imports nothing by itself: ``deploykit.deploy_command`` starts the compose
config before the procedure (and the Docker SDK) is imported.
"""
