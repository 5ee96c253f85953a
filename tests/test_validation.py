"""Validation at the edge, below the CLI: policy values against their fields (one function for
search spaces, policy files and warm starts), output paths, devices present on this machine."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import yaml

from autocompress.bundle.apply import read_policy_file
from autocompress.devices import why_absent
from autocompress.errors import ConfigError
from autocompress.search.checks import check_devices
from autocompress.spec.config import spec_from_dict
from autocompress.spec.outputs import check_out_dir, check_out_file
from autocompress.spec.policy import Policy, knob_fields, section_types
from autocompress.spec.validate import check_value, policy_from_user

from conftest import tiny_study

ABSENT_GPU = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU, on any machine

ALL_FIELDS = [(section, name, f) for section, cls in section_types().items() for name, f in knob_fields(cls).items()]


@pytest.mark.parametrize("section, name, f", ALL_FIELDS, ids=[f"{s}.{n}" for s, n, _ in ALL_FIELDS])
def test_every_default_is_a_value_the_space_could_produce(section, name, f):
    """An exported policy (every knob written out) always reads back; a new field must keep it so."""
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    assert check_value(f, list(default) if isinstance(default, tuple) else default) == default


@pytest.mark.parametrize("section, knob, value, words", [
    ("quantization", "mode", "int3", "invalid value 'int3'"),
    ("runtime", "backend", "tensorrt", "invalid value"),
    ("pruning", "ratio", 0.99, "outside the valid range [0.0, 0.95]"),
    ("pruning", "ratio_early", -2, "outside the valid range"),
    ("training", "batch_size", 0, "outside the valid range [1, inf]"),
    ("training", "batch_size", 12.5, "expected an integer"),
    ("training", "batch_size", True, "expected an integer"),
    ("training", "lr", "fast", "expected a number"),
    ("training", "lr", float("nan"), "finite"),
    ("distillation", "temperature", float("inf"), "finite"),
    ("training", "amp", False, "quote it"),
    ("quantization", "per_channel", "yes", "expected true/false"),
    ("pruning", "protect", [1, 2], "list of strings"),
])
def test_check_value_refuses_what_no_space_could_produce(section, knob, value, words):
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("(", r"\(")):
        check_value(knob_fields(section_types()[section])[knob], value)


def test_policy_from_user_names_the_field_under_its_prefix():
    raw = {"pruning": {"method": "weight", "ratio": 0.3}, "quantization": {"mode": "static_int8"}}
    policy = policy_from_user(raw, "p.yaml")
    assert policy == Policy.from_dict(raw) and policy.pruning.ratio == 0.3
    for prefix, field in ((None, "quantization.mode"), ("policy", "policy.quantization.mode"),
                          ("warm_start.policies[2]", "warm_start.policies[2].quantization.mode")):
        with pytest.raises(ConfigError) as err:
            policy_from_user({"quantization": {"mode": "int3"}}, "p.yaml", prefix)
        assert err.value.field == field and str(err.value).startswith("p.yaml: ")
    for raw, field in (([1], "policy"), ({"pruning": [1]}, "policy.pruning"), ({"pruning": {"x": 1}}, "policy.pruning.x"),
                       ({"speed": {}}, "policy.speed")):
        with pytest.raises(ConfigError) as err:
            policy_from_user(raw, "p.yaml", "policy")
        assert err.value.field == field


def test_policy_files_exported_and_plain(tmp_path):
    exported = tmp_path / "policy.yaml"
    exported.write_text(yaml.safe_dump({"policy": Policy().to_dict(), "seed": 3}))
    assert read_policy_file(exported, with_study=False).policy == Policy()
    exported.write_text(yaml.safe_dump({"policy": {**Policy().to_dict(), "pruning": {"ratio": 2.0}}}))
    with pytest.raises(ConfigError) as err:
        read_policy_file(exported, with_study=False)
    assert err.value.field == "policy.pruning.ratio"
    plain = tmp_path / "plain.yaml"
    plain.write_text("training: {lr: .inf}\n")
    with pytest.raises(ConfigError) as err:
        read_policy_file(plain)
    assert err.value.field == "training.lr" and str(plain) in str(err.value)


def test_output_folders(tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("x")
    check_out_dir(tmp_path / "new" / "deeper", "--out")  # created later, with its parents
    check_out_dir(tmp_path, "--out")                      # an existing folder
    for path, words in ((taken, "is a file"), (taken / "run", "is not a folder"), (taken / "a" / "b", "is not a folder")):
        with pytest.raises(ConfigError, match=words) as err:
            check_out_dir(path, "--out")
        assert err.value.field == "--out"


def test_output_files(tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("x")
    check_out_file(tmp_path / "report.html", "--out")
    check_out_file(taken, "--csv")  # overwriting a file is fine
    for path, words in ((tmp_path, "is a folder"), (tmp_path / "missing" / "t.csv", "does not exist"),
                        (taken / "t.csv", "is not a folder")):
        with pytest.raises(ConfigError, match=words) as err:
            check_out_file(path, "--csv")
        assert err.value.field == "--csv"


def test_devices_present_here():
    assert why_absent("cpu") is None and why_absent("auto") is None
    assert why_absent(ABSENT_GPU)
    if torch.cuda.device_count() == 0:
        assert "no CUDA device" in why_absent("cuda")
    else:
        assert why_absent("cuda") is None and why_absent("cuda:0") is None
    assert (why_absent("mps") is None) == torch.backends.mps.is_available()


def test_devices_are_checked_for_the_process_that_uses_them():
    """A study file names devices of the machine that searches; loading it (a worker, export,
    a stored study) checks their names only, the process that trains checks they are here."""
    spec = spec_from_dict(tiny_study(devices=[ABSENT_GPU], device=ABSENT_GPU), "s.yaml")
    check_devices(spec, "cpu", local_workers=False)  # a worker with its own --device
    with pytest.raises(ConfigError) as err:
        check_devices(spec, local_workers=False)     # a worker that would train on the study's device
    assert err.value.field == "device"
    with pytest.raises(ConfigError) as err:
        check_devices(spec, "cpu")                   # search: its local workers use devices
    assert err.value.field == "devices[0]"
    with pytest.raises(ConfigError) as err:
        check_devices(spec, ABSENT_GPU, local_workers=False)
    assert err.value.field == "--device" and err.value.source is None
    with pytest.raises(ConfigError, match="unknown device"):
        check_devices(spec, "tpu", local_workers=False)
    target = spec_from_dict(tiny_study(target={**tiny_study()["target"], "device": ABSENT_GPU}), "s.yaml")
    with pytest.raises(ConfigError) as err:
        check_devices(target, "cpu", local_workers=False)
    assert err.value.field == "target.device"
