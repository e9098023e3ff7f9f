"""scripts/spine_table.py --keep-other-rows: the rows of the models not rerun come from the earlier table."""

from __future__ import annotations

import json
import sys

from tests.helpers import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import spine_table  # noqa: E402  (scripts/ is not a package)


def test_kept_rows_are_the_earlier_tables_rows_of_the_models_not_run(tmp_path):
    table = tmp_path / "spine_table.json"
    assert spine_table.kept_rows(table, ["resnet50"]) == []  # no earlier table: nothing kept
    earlier = [{"variant": "unet", "mre": 62.9}, {"variant": "resnet50", "mre": 70.0}, {"variant": "hrnet_w32", "mre": 60.6}]
    table.write_text(json.dumps({"command": "c", "commit": "x", "date": "d", "rows": earlier}))
    assert spine_table.kept_rows(table, ["resnet50"]) == [earlier[0], earlier[2]]
    assert spine_table.kept_rows(table, ["unet", "resnet50", "hrnet_w32"]) == []
