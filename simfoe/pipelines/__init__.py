"""ALTO-style compound pipelines; the API is :mod:`simfoe.pipelines.api` (``load_pipeline``,
``run_pipeline``, ``compare``, ``plot_curves``), importable from here (loaded on first use)."""

__all__ = ["PointDone", "Variant", "compare", "load_pipeline", "plot_curves", "run_pipeline"]


def __getattr__(name: str):
    if name in __all__:
        from simfoe.pipelines import api

        return getattr(api, name)
    raise AttributeError(f"module 'simfoe.pipelines' has no attribute {name!r}")
