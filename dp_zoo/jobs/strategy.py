"""The ``tf.distribute`` strategy of a training job, and what its workers must agree on.

``make_strategy`` configures TensorFlow (logical CPUs, a TPU) and returns the
strategy; ``is_chief`` and ``worker_label`` tell a worker's role; and
``all_workers_agree`` checks that every worker holds the same value (the same
step on resume, the same weights at the end).
"""

def make_strategy(strategy="default", *, tpu=None, logical_cpus=None):
    """The ``tf.distribute`` strategy named ``strategy``, configuring TensorFlow first.

    Call it before TensorFlow runs any op: MultiWorkerMirroredStrategy and
    logical CPU devices must be set up before the runtime starts.

    Raises:
      ValueError: a negative ``logical_cpus``, or no TPU to connect to (one
        line saying how to name one).
    """
    import tensorflow as tf

    n = logical_cpus
    if n:
        if n < 1:
            raise ValueError("--logical-cpus must be >= 1.")
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)
    if strategy == "mirrored":
        if n:
            return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(n)])
        return tf.distribute.MirroredStrategy()
    if strategy == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if strategy == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or None)
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except Exception as e:  # TF raises several types here; all mean "no such TPU"
            where = f"TPU {tpu!r}" if tpu else "a TPU (none named by --tpu or the environment)"
            raise ValueError(f"--strategy tpu: cannot connect to {where}: {(str(e).splitlines() or [type(e).__name__])[0].rstrip('.')}. "
                             "Run on a TPU VM or pass --tpu NAME (or grpc://HOST:PORT).") from None
        return tf.distribute.TPUStrategy(resolver)
    return tf.distribute.get_strategy()


def is_chief(strategy):
    """True on the one process that writes the run directory and publishes.

    Single-process strategies: always. Multi-worker: the "chief" task, or
    worker 0 when TF_CONFIG names no chief (TensorFlow's convention).
    """
    return bool(getattr(strategy.extended, "should_checkpoint", True))


def worker_label(strategy):
    """"worker 1" (the task type and id) in a multi-worker run, for its messages; None otherwise."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return None
    return f"{resolver.task_type} {resolver.task_id}"


def all_workers_agree(strategy, value):
    """True iff every replica of ``strategy`` holds the same non-negative int ``value`` (< 2**62).

    One all-reduce: each replica checks that the SUM over replicas equals
    num_replicas * its own value, which holds on every replica only when all
    values are equal. Runs on every worker (it is a collective).
    """
    import tensorflow as tf

    n = strategy.num_replicas_in_sync
    if n == 1:
        return True
    value = int(value) & ((1 << 62) - 1)
    parts = tf.constant([value >> 31, value & 0x7FFFFFFF], tf.int64)
    total = strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: parts), axis=None)
    return [int(x) for x in total.numpy()] == [n * (value >> 31), n * (value & 0x7FFFFFFF)]
