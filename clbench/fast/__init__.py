"""Speed layers: the same maths as the plain definitions in ``methods/``, computed faster.

Reading a method never requires reading this package. Each layer here is proven equal to the plain
definition it replaces by a test (bit for bit where the operations are the same, to float rounding
where sums are regrouped):

- ``avalanche``: Avalanche's training loop with pre-collated tensor batches and only the per-step
  callbacks that do something (naive, ewc, replay, the meta-test strategies, hypernet);
- ``layers``: CPU kernels for ANML's batch-1 convolutions and its 2x2 max-pool;
- ``metagrad``: the ANML meta-objective with a factored head, a rank-one meta-gradient and a chunked
  meta-loss;
- ``meta_test``: ANML/OML meta-test on cached frozen features, many trajectories stacked at once;
- ``memory``: glibc's allocator kept from unmapping freed activations (every compute process).

One setting chooses them: ``BuildContext.fast`` / ``Job.fast`` (``clbench run --plain`` turns them off).
Meta-training always takes its fast step: a checkpoint's bits are part of its identity (``FORMAT``).
"""
