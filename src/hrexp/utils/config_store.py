"""Config options that YAML cannot express, registered in Hydra's ConfigStore by :func:`hrexp.startup.startup`.

``data=checkpoint``, eval.yaml's default data option: the checkpoint's own data (:mod:`hrexp.jobs.eval_data`).
It must accept any key (``eval.py ckpt_path=X data.test_csv=Y``) while Hydra sets every composed config to
struct mode, which refuses a key a node does not have; only a node made with struct off keeps accepting them,
and YAML cannot make one.
"""

from __future__ import annotations

from omegaconf import OmegaConf

#: eval.yaml's default data option: the checkpoint's own data, open to ``data.<key>=...``.
CHECKPOINT_DATA = "checkpoint"
#: The option's ``_target_``: it tells the option from a whole data group, and fails clearly outside eval.
CHECKPOINT_DATA_TARGET = "hrexp.jobs.eval_data.checkpoint_data_outside_eval"


def register_config_nodes() -> None:
    """Register ``data=checkpoint``: a data node with struct off (idempotent)."""
    from hydra.core.config_store import ConfigStore

    node = OmegaConf.create({"_target_": CHECKPOINT_DATA_TARGET})
    OmegaConf.set_struct(node, False)
    ConfigStore.instance().store(group="data", name=CHECKPOINT_DATA, node=node, provider="hrexp")
