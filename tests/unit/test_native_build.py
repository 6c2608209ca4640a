"""The compiled build of the HTTP/1.1 path (``proxy.native``): used only when it was made from
exactly today's sources, and the Python source it stands in for still passes the same tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from proxy import native

REPO = Path(__file__).resolve().parents[2]
PURE = os.environ.get(native.PURE_ENV) == "1"
IN_CI = os.environ.get("CI") == "true"
# The tests of what is compiled: run again on the Python source by the last test below.
CODEC_TESTS = (
    "tests/unit/proxy/http",
    "tests/unit/proxy/pipeline",
    "tests/unit/proxy/filters",
    "tests/unit/proxy/test_http_access_line.py",  # telemetry
    "tests/unit/proxy/test_prometheus.py",
    "tests/unit/proxy/test_stats.py",  # series
    "tests/unit/proxy/test_access_log.py",
    "tests/unit/proxy/test_telemetry_series.py",
    "tests/unit/proxy/upstream",  # hosts, pool, connector
    "tests/unit/proxy/test_cluster.py",
    "tests/unit/proxy/test_worker_reload.py",
)


def identity(**sources: str) -> dict[str, object]:
    return {"python": "3.11.2 (main)", "sources": {f"proxy/{k}.py": v for k, v in sources.items()}}


def test_a_build_of_todays_sources_runs() -> None:
    assert native.judge(identity(codec="a1", channel="b2"), identity(codec="a1", channel="b2")) == (
        True,
        "compiled (mypyc, build/native)",
    )


def test_a_build_from_an_edited_source_is_not_used_and_the_file_is_named() -> None:
    ok, why = native.judge(identity(codec="old", channel="b2"), identity(codec="new", channel="b2"))
    assert not ok
    assert why == "pure Python (build/native was compiled from other proxy/codec.py)"


def test_a_module_no_longer_compiled_does_not_run_from_an_old_binary() -> None:
    ok, why = native.judge(identity(codec="a1", channel="b2"), identity(codec="a1"))
    assert (ok, why) == (
        False,
        "pure Python (build/native was compiled from other proxy/channel.py)",
    )


def test_a_build_for_another_interpreter_is_not_used() -> None:
    built = {**identity(codec="a1"), "python": "3.12.0"}
    assert native.judge(built, identity(codec="a1")) == (
        False,
        "pure Python (build/native was compiled for Python 3.12.0)",
    )


@pytest.mark.parametrize("manifest", [None, [], "x", {"python": "3.11.2 (main)"}])
def test_a_manifest_that_says_nothing_usable_means_python(manifest: object) -> None:
    assert native.judge(manifest, identity(codec="a1"))[0] is False


def test_every_compiled_module_is_type_checked_as_mypyc_needs() -> None:
    """mypyc trusts the annotations: a module it compiles must be in mypy's strict list."""
    config = (REPO / "pyproject.toml").read_text()
    for path in native.COMPILED:
        assert f'"{path}"' in config or f'"{Path(path).parent!s}"' in config, path


def test_the_build_in_use_is_the_one_asked_for() -> None:
    """Pure when asked; compiled in CI, where make setup built it (a missing build there is a
    failure: the instruction budget and the e2e tests are meant for what ships)."""
    import proxy.filters.http1_downstream as manager
    import proxy.http.codec as codec
    import proxy.pipeline.forward as forward

    files = [Path(m.__file__ or "") for m in (codec, manager, forward)]
    if PURE:
        assert [f.suffix for f in files] == [".py"] * 3
        assert native.status() == f"pure Python ({native.PURE_ENV}=1)"
        return
    if not IN_CI and not native.verdict()[0]:
        pytest.skip(f"outside CI (CI=true fails here): no usable build: {native.status()}")
    assert native.status() == "compiled (mypyc, build/native)"
    assert [f.suffix for f in files] == [".so"] * 3
    assert all(native.BUILD_DIR in f.parents for f in files)


@pytest.mark.skipif(PURE, reason="not a missing prerequisite, in CI too: this is the pure run")
def test_the_python_source_passes_the_codec_and_pipeline_tests_too() -> None:
    """The source stays the reference: the tests of every compiled module, on the source."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *CODEC_TESTS, __file__],
        cwd=REPO,
        env={**os.environ, native.PURE_ENV: "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout.splitlines()[-1]
