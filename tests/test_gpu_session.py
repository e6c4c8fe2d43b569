"""benchmarks/gpu_session.py, the prepared device call: budgets, cut-offs, packing, and its
GAP-2K step end to end on the CPU (the device machine is lent for minutes, rarely, so the
script must work the first time it runs there)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import replace
from pathlib import Path

import pytest

import ntkcheck as nc
from ntkcheck.studies import _files as files
from ntkcheck.studies import table1
from tests.scripts import ROOT, load_script

gs = load_script("benchmarks/gpu_session.py")


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def step(name, code, cap=30.0, need=0.0, **kwargs):
    return gs.Step(name, f"{name}.log", cap=cap, need=need,
                   commands=lambda seconds, out: [python(code)], **kwargs)


def test_steps_run_in_turn_and_a_cut_off_step_does_not_stop_the_next(tmp_path, capsys):
    steps = [step("fails", "import sys; print('first'); sys.exit(2)"),
             step("slow", "import time; print('started', flush=True); time.sleep(60)",
                  cap=1.5),
             step("last", "print('after the cut')")]
    start = time.monotonic()
    session = gs.run(steps, seconds=60, out=tmp_path, reserve=0)
    assert time.monotonic() - start < 20
    fails, slow, last = session["steps"]
    assert (fails["rc"], fails["ok"], fails["cut_off"]) == (2, False, False)
    assert (slow["cut_off"], slow["ok"], slow["given_seconds"]) == (True, False, 1.5)
    assert slow["seconds"] < 5
    assert "started" in (tmp_path / "slow.log").read_text()
    assert "[cut off after" in (tmp_path / "slow.log").read_text()
    assert (last["rc"], last["ok"]) == (0, True)
    assert json.loads((tmp_path / "session.json").read_text())["steps"] == session["steps"]
    printed = capsys.readouterr().out
    assert "after the cut" in printed  # each log's end is printed as its step ends
    assert printed.splitlines()[-5:] == [
        "device: None",
        "step       seconds  status",
        "fails         0/30  exit 2 (fails.log)",
        "slow           2/2  cut off (slow.log)",
        "last          0/30  exit 0 (last.log)",
    ]


def test_a_cut_off_step_leaves_no_process_behind(tmp_path):
    marker = tmp_path / "grandchild.txt"
    grandchild = "import sys, time; time.sleep(2); open(sys.argv[1], 'w').write('alive')"
    code = ("import subprocess, sys, time; "
            f"subprocess.Popen([sys.executable, '-c', {grandchild!r}, {str(marker)!r}]); "
            "time.sleep(60)")
    gs.run([step("spawns", code, cap=1)], seconds=30, out=tmp_path, reserve=0)
    time.sleep(3)
    assert not marker.exists()  # the whole process group was killed, the grandchild too
    subprocess.run([sys.executable, "-c", grandchild, str(marker)], check=True)
    assert marker.read_text() == "alive"  # what it would have written


def test_a_step_with_too_little_time_left_is_skipped(tmp_path, capsys):
    steps = [step("first", "import time; time.sleep(1.2)"),
             step("big", "print('ran')", need=10)]
    session = gs.run(steps, seconds=11, out=tmp_path, reserve=1)
    assert session["steps"][1] == {"step": "big", "skipped": "9 s left, needs 10"}
    assert not (tmp_path / "big.log").exists()
    last = capsys.readouterr().out.splitlines()[-1]
    assert last == "big              -  skipped: 9 s left, needs 10"


def test_the_budget_bounds_every_step_and_the_whole_call(tmp_path):
    sleep = "import time; time.sleep(30)"
    start = time.monotonic()
    session = gs.run([step("a", sleep, cap=100), step("b", sleep, cap=100)],
                     seconds=3, out=tmp_path, reserve=1)
    assert time.monotonic() - start < 8
    assert session["steps"][0]["cut_off"] and session["steps"][0]["given_seconds"] == 2
    assert session["steps"][1] == {"step": "b", "skipped": "0 s left, needs 0"}


def test_environment_adds_to_search_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/already")
    code = "import os; print(os.environ['PYTHONPATH'], os.environ['NTKCHECK_DATA'])"
    gs.run([step("env", code, env=lambda: {"PYTHONPATH": "/site", "NTKCHECK_DATA": "d"})],
           seconds=30, out=tmp_path, reserve=0)
    # the checkout's root too: the device machine runs it uninstalled
    assert f"/site:{ROOT}:/already d" in (tmp_path / "env.log").read_text()


def test_the_clocks_are_sampled_while_the_steps_run_and_no_longer(tmp_path, monkeypatch):
    bin_folder = tmp_path / "bin"
    bin_folder.mkdir()
    fake = bin_folder / "nvidia-smi"  # a line every 0.1 s when asked to loop
    fake.write_text('#!/bin/sh\ncase "$*" in *" -l "*) while true; do echo "$*"; sleep 0.1; '
                    'done;; *) echo "Fake GPU, 1.0, 2 MiB";; esac\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_folder}:{os.environ['PATH']}")
    out = tmp_path / "out"
    session = gs.run([step("wait", "import time; time.sleep(1)")], seconds=30, out=out,
                     reserve=0)
    assert session["device"] == "Fake GPU, 1.0, 2 MiB"
    lines = (out / gs.CLOCKS).read_text().splitlines()
    assert len(lines) >= 3 and "clocks.sm" in lines[0] and lines[0].endswith(" -l 5")
    time.sleep(0.5)
    assert (out / gs.CLOCKS).read_text().splitlines() == lines  # the sampler was stopped


def test_without_nvidia_smi_no_clocks_are_sampled(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    gs.run([step("quick", "pass")], seconds=30, out=tmp_path / "out", reserve=0)
    assert not (tmp_path / "out" / gs.CLOCKS).exists()


def test_pack_leaves_out_gram_tiles_and_splits_into_parts(tmp_path):
    work = tmp_path / "carry" / "work" / "CNTK-GAP-2K" / "fixed"
    (work / "train").mkdir(parents=True)
    (work / "test").mkdir()
    (work / "train" / "tile_0_0.pt").write_bytes(b"x" * 5000)
    (work / "fit.pt").write_bytes(bytes(range(256)) * 12)
    (work / "test" / "scores_0000000.pt").write_bytes(b"s" * 1000)
    out = tmp_path / "out"
    out.mkdir()
    found = gs.pack([Path("carry/work"), Path("carry/absent")], out / gs.PACK, max_files=5,
                    part_bytes=4096, cwd=tmp_path)
    parts = sorted(out.iterdir())
    assert found["parts"] == len(parts) >= 2
    assert all(p.stat().st_size <= 4096 for p in parts)
    with pytest.raises(ValueError, match="more than 1 files"):
        gs.pack([Path("carry/work")], out / gs.PACK, max_files=1, part_bytes=4096,
                cwd=tmp_path)

    elsewhere = tmp_path / "elsewhere"
    assert gs.unpack(out, root=elsewhere).startswith("CNTK-GAP-2K unfinished")
    saved = elsewhere / gs.SAVED_WORK
    restored = elsewhere / "carry" / "work" / "CNTK-GAP-2K" / "fixed"
    assert (restored / "fit.pt").read_bytes() == (work / "fit.pt").read_bytes()
    assert (restored / "test" / "scores_0000000.pt").exists()
    assert not (restored / "train").exists()
    with tarfile.open(saved) as tar:
        assert not any("train" in Path(n).parts for n in tar.getnames())


def test_a_finished_column_goes_into_the_committed_table(tmp_path):
    """Once every depth of CNTK-GAP-2K came back, unpack adds its cells to Table 1 beside
    the others and drops the saved work."""
    device = tmp_path / "device"
    gap = [{"column": "CNTK-GAP-2K", "depth": d, "accuracy": 50.0 + d / 10, "paper": p,
            "n_train": 2000, "n_test": 10000, "data": "cifar10-jpeg"}
           for d, p in table1.PAPER["CNTK-GAP-2K"].items()]
    (device / gs.GAP2K_OUT).mkdir(parents=True)
    files.write_rows(device / gs.GAP2K_OUT / "table1.csv", table1.FIELDS, gap)
    (tmp_path / "out").mkdir()
    gs.pack([gs.GAP2K_OUT], tmp_path / "out" / gs.PACK, max_files=2, cwd=device)
    here = tmp_path / "here"
    (here / gs.RESULTS).mkdir(parents=True)
    older = [{"column": c, "depth": 3, "accuracy": 1.0} for c in ("CNTK-V", "CNTK-GAP-2K")]
    files.write_rows(here / gs.RESULTS / "table1.csv", table1.FIELDS, older)

    said = gs.unpack(tmp_path / "out", root=here)
    assert said.startswith("CNTK-GAP-2K finished")
    rows = files.read_rows(here / gs.RESULTS / "table1.csv")
    assert [(r["column"], r["depth"], r["accuracy"]) for r in rows] == [
        ("CNTK-V", "3", "1.0"), *[("CNTK-GAP-2K", str(r["depth"]), str(r["accuracy"]))
                                  for r in gap]]
    assert "CNTK-GAP-2K ours" in (here / gs.RESULTS / "table1.md").read_text()
    assert (here / gs.RESULTS / "table1.png").stat().st_size > 10_000
    assert not (here / gs.SAVED_WORK).exists()


def test_steps_run_in_the_order_named(tmp_path, monkeypatch):
    monkeypatch.setattr(gs, "STEPS", {n: step(n, f"print('{n}')") for n in ("a", "b", "c")})
    assert gs.main(["run", "--out", str(tmp_path), "--seconds", "60", "--steps", "c,a"]) == 0
    session = json.loads((tmp_path / "session.json").read_text())
    assert [s["step"] for s in session["steps"]] == ["c", "a"]


@pytest.mark.parametrize(("before", "after", "room"), [
    ([], [], 6), (["pytest"], ["bench"], 3), (["pytest", "profile"], ["v50k-fixed"], 2),
    (["pytest", "profile", "bench"], [], 2)])
def test_the_gap2k_parts_leave_room_for_the_later_steps_files(before, after, room, tmp_path,
                                                              monkeypatch):
    """Of the 8 files that come back: session.json, the logs and outputs of the steps before
    gap2k, its log, those of the steps after it in the same call, and its parts."""
    monkeypatch.setattr(gs, "pack", lambda sources, target, max_files: {"parts": max_files})
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi: no clocks file
    monkeypatch.chdir(tmp_path)  # the stand-ins write their files here, the call's out

    def stand_in(name):  # writes to out what the step writes there; only gap2k packs
        real = gs.STEPS[name]
        code = f"for f in {[real.log, *real.outputs]!r}: open(f, 'a').close()"
        return replace(real, cap=30, need=0, commands=lambda seconds, out: [python(code)],
                       after=real.after if name == "gap2k" else None)

    session = gs.run([stand_in(n) for n in [*before, "gap2k", *after]], seconds=60,
                     out=tmp_path, reserve=0)
    (gap2k,) = [s for s in session["steps"] if s["step"] == "gap2k"]
    assert gap2k["after"] == {"parts": room}


def test_unpack_without_parts_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="gap2k_work.tar.NN parts nor cntk_v_50k"):
        gs.unpack(tmp_path, root=tmp_path)


def test_the_jpeg_set_travels_compressed_and_comes_back_bit_for_bit(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    nc.data.write_slice("slice", 20, 5)  # real JPEG files, with their shared 621-byte tables
    original = (tmp_path / "slice" / "cifar10_jpeg.zip").read_bytes()
    (tmp_path / gs.DATA).mkdir(parents=True)
    gs.compress(tmp_path / "slice" / "cifar10_jpeg.zip", tmp_path / gs.PACKED_JPEG_SET)
    assert (tmp_path / gs.PACKED_JPEG_SET).stat().st_size < len(original) / 2
    assert "restored" in gs.inflate()
    assert (tmp_path / gs.JPEG_SET).read_bytes() == original
    assert gs.inflate().endswith("is there")  # a warm machine's second call

    (tmp_path / gs.JPEG_SET).unlink()  # a damaged pack fails and leaves no zip behind
    packed = bytearray((tmp_path / gs.PACKED_JPEG_SET).read_bytes())
    packed[len(packed) // 2] ^= 0xFF
    (tmp_path / gs.PACKED_JPEG_SET).write_bytes(bytes(packed))
    with pytest.raises(gs.lzma.LZMAError):
        gs.inflate()
    assert not (tmp_path / gs.JPEG_SET).exists()


def test_the_gap2k_step_resumes_and_packs_on_the_cpu(tmp_path, monkeypatch):
    """The step's own command line, on the CPU and a tiny slice: it stops in time, packs,
    and a second call with the unpacked work computes nothing again."""
    monkeypatch.chdir(tmp_path)
    nc.data.write_slice(gs.DATA, 4, 3)
    out = tmp_path / "out"
    out.mkdir()

    def tiny(seconds, out):
        inflate, argv = gs._gap2k(seconds, out)
        argv[argv.index("cuda")] = "cpu"
        return [inflate, argv + ["--n-train", "4", "--n-test", "3", "--depths", "3,4",
                                 "--quiet"]]

    tiny_step = gs.Step("gap2k", "gap2k.log", cap=300, need=0, commands=tiny,
                        after=gs.STEPS["gap2k"].after, ok=gs.STEPS["gap2k"].ok)
    session = gs.run([tiny_step], seconds=300, out=out, reserve=0)
    (record,) = session["steps"]
    assert record["ok"], (out / "gap2k.log").read_text()
    assert record["after"]["parts"] == 1
    rows = (tmp_path / gs.GAP2K_OUT / "table1.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[1].startswith("CNTK-GAP-2K,3,")
    assert (tmp_path / gs.WORK / "CNTK-GAP-2K" / "fixed" / "train").is_dir()  # the Gram's tiles

    fresh = tmp_path / "fresh"
    assert gs.unpack(out, root=fresh).startswith("CNTK-GAP-2K unfinished")  # depths 3, 4 only
    assert (fresh / gs.SAVED_WORK).exists()
    column = fresh / gs.WORK / "CNTK-GAP-2K" / "fixed"
    assert (column / "fit.pt").exists() and list((column / "test").glob("*.pt"))
    assert not (column / "train").exists()

    # elsewhere, from the unpacked work alone and the JPEG set as it travels (compressed):
    # the fit and chunks are loaded, not recomputed
    shutil.rmtree(fresh / gs.GAP2K_OUT)
    (fresh / gs.DATA).mkdir(parents=True)
    gs.compress(gs.JPEG_SET, fresh / gs.PACKED_JPEG_SET)
    shutil.copy(gs.DATA / "cifar10_exact_subset.npz", fresh / gs.DATA)
    monkeypatch.chdir(fresh)
    again = gs.run([tiny_step], seconds=300, out=tmp_path / "out2", reserve=0)
    assert again["steps"][0]["ok"], (tmp_path / "out2" / "gap2k.log").read_text()
    assert "restored from" in (tmp_path / "out2" / "gap2k.log").read_text()
    assert not (column / "train").exists()  # no Gram tile: the saved fit served
    assert (fresh / gs.GAP2K_OUT / "table1.csv").read_text().splitlines() == rows


def test_the_v50k_step_brings_its_table_back_and_unpack_keeps_it(tmp_path, monkeypatch):
    """The step's own command lines on the CPU and a tiny slice: CNTK-V with the first and
    last layer fixed, its CSV in out, and from there in the committed results."""
    monkeypatch.chdir(tmp_path)
    nc.data.write_slice(gs.DATA, 4, 3)

    def tiny(seconds, out):
        inflate, argv = gs._v50k_fixed(seconds, out)
        argv[argv.index("cuda")] = "cpu"
        return [inflate, argv + ["--n-train", "4", "--n-test", "3", "--depths", "3",
                                 "--quiet"]]

    out = tmp_path / "out"
    session = gs.run([replace(gs.STEPS["v50k-fixed"], commands=tiny, need=0)], seconds=300,
                     out=out, reserve=0)
    (record,) = session["steps"]
    assert record["ok"] and record["after"] == {"csv": gs.V50K_CSV}, \
        (out / "v50k_fixed.log").read_text()
    (row,) = files.read_rows(out / gs.V50K_CSV)
    assert (row["column"], row["depth"], row["fix_first_last"], row["n_train"]) == \
        ("CNTK-V", "3", "True", "4")

    here = tmp_path / "here"
    assert gs.unpack(out, root=here).startswith("CNTK-V on 50k images")
    assert (here / gs.V50K_RESULTS / gs.V50K_CSV).read_bytes() == \
        (out / gs.V50K_CSV).read_bytes()


def test_the_profile_step_falls_back_to_the_plain_profile(tmp_path, monkeypatch):
    bin_folder = tmp_path / "bin"
    bin_folder.mkdir()
    fake = bin_folder / "ncu"  # an ncu that knows no --print-details: records each call
    fake.write_text('#!/bin/sh\necho "ncu $*" >> "$NCU_CALLS"\n'
                    'case "$*" in *--print-details*) exit 1;; esac\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_folder}:{os.environ['PATH']}")
    monkeypatch.setenv("NCU_CALLS", str(tmp_path / "calls.txt"))
    session = gs.run([gs.STEPS["profile"]], seconds=60, out=tmp_path / "out", reserve=0)
    assert session["steps"][0]["ok"]
    detailed, plain = (tmp_path / "calls.txt").read_text().splitlines()
    assert "--print-details all --metrics regex:" in detailed
    assert "--print-details" not in plain and "--metrics" not in plain
    for call in (detailed, plain):
        assert "--kernel-name cntk_slices" in call and "--section SourceCounters" in call
        assert call.endswith("benchmarks/profile_cntk.py")
    assert (ROOT / "benchmarks" / "profile_cntk.py").is_file()


@pytest.mark.parametrize(("parallel_exit", "calls", "rc"), [
    (0, ["-n 3"], 0), (1, ["-n 3"], 1), (4, ["-n 3", ""], 0), (2, ["-n 3", ""], 0)])
def test_the_gpu_tests_run_in_parallel_or_again_in_one_process(parallel_exit, calls, rc,
                                                                tmp_path):
    # a stand-in pytest: in parallel it exits as given, alone it passes; failed tests (1)
    # are not run twice, xdist's own failures (2 and above) are
    record = tmp_path / "calls.txt"
    code = (f"import sys; open({str(record)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n'); "
            f"sys.exit({parallel_exit} if '-n' in sys.argv else 0)")
    command = gs.parallel_or_serial([sys.executable, "-c", code], 3)
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == rc
    assert record.read_text().splitlines() == calls
    assert ("again in one" in done.stdout) == (len(calls) == 2)


def test_the_gpu_tests_take_xdist_only_where_its_wheels_were_carried(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (alone,) = gs._pytest(100, tmp_path)
    assert alone[:5] == [sys.executable, "-m", "pytest", "-m", "gpu"] and "-n" not in alone
    gs.WHEELS.mkdir(parents=True)
    for name in ("pytest_xdist-3.8.0-py3-none-any.whl", "execnet-2.1.2-py3-none-any.whl",
                 "frozendict-2.5.1-py3-none-any.whl"):
        (gs.WHEELS / name).write_bytes(b"")
    install, parallel = gs._pytest(100, tmp_path)
    assert [Path(a).name for a in install if a.endswith(".whl")] == [
        "pytest_xdist-3.8.0-py3-none-any.whl", "execnet-2.1.2-py3-none-any.whl"]
    assert parallel[:2] == ["sh", "-c"] and f"-n {gs.TEST_WORKERS}" in parallel[2]
    install, _ = gs._bench(100, tmp_path)  # the benchmark installs neural-tangents' alone
    assert [Path(a).name for a in install if a.endswith(".whl")] == [
        "frozendict-2.5.1-py3-none-any.whl"]


def test_the_bench_step_names_only_options_the_benchmark_has(tmp_path):
    help_text = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cntk_gpu.py"),
                                "--help"], capture_output=True, text=True, check=True).stdout
    (bench,) = gs._bench(100, tmp_path)[-1:]
    assert [a for a in bench if a.startswith("--") and a not in help_text] == []

