"""The harness: the layers of this code base and the one rule between them.

From the bottom up (a module imports only from its own layer or the layers below it):

1. kernel -- ``harness.errors``, ``harness.registry``: the error type and the generic registry.
2. tasks -- ``tasks/``: the catalog and the simulators behind one ``TaskEnv`` interface.
3. data and reporting -- data: ``harness.steps``, ``harness.replay``, ``harness.offline*``,
   ``harness.metrics``, ``harness.checkpoint``, ``harness.streams``, ``harness.config``,
   ``harness.provenance``; reporting: ``harness.reporting``, ``harness.lifecycle``, ``harness.plots``
   (and ``mlflow``).
4. the method contract -- ``methods.base``: ``Method``, ``MethodSpec``, the contexts, ``Step``
   (re-exported from ``harness.steps``) and the config/preset resolution.
5. methods -- ``methods/`` (the registry in ``methods/__init__``, ``methods.backbone``,
   ``methods.gsa``, ``methods.cl``, one module per method).
6. the drive -- ``harness.runner``, ``harness.evaluation``, ``harness.collect``, ``harness.pretraining``,
   ``harness.pipeline``, ``harness.compare``, ``harness.references`` (shipped reference results),
   ``harness.launch`` (a run-stream command as data),
   ``harness.sweep`` (grids of runs on local, Ray and Slurm backends), ``harness.archive`` (finished runs as
   records that outlive their store): they build methods and tasks, run them and report;
   ``harness.registry_models`` (pre-trained models in the MLflow model registry) and ``harness.doctor``
   (what decides results on this machine, and whether it renders).
7. ``cli.py``.

A method (layers 4 and 5) may import the kernel, tasks, the data helpers (replay, offline data,
provenance, ...) and the method contract; never the drive, and never the reporting side
(``harness.reporting``, ``harness.lifecycle``, ``harness.plots``, ``mlflow``): a method returns plain
metric dicts and the drive reports them. The rule counts every import, also those inside functions.
``tests/test_layering.py`` holds it and names the file, line and import that break it.
"""
