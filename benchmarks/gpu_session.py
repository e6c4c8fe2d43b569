"""The GPU checks of a device call, prepared without a GPU: steps in turn, inside one budget.

A session lent a GPU has 15 minutes of device time in all, each machine start (a minute or
more) counted in; one command runs at most 10 minutes, a machine stays warm 30 s after a
call, and at most 8 files come back from $OUT (16 MiB each).  So a GPU session's work is
two calls of this script, the second on the warm machine as soon as the first returns:

    python benchmarks/gpu_session.py prepare          # here: fills carry/ (what travels)
    # device run 1, carry ["carry"], timeout_s 600: what matters most first (the README's
    # plan for the next session says which), e.g.
    python3 benchmarks/gpu_session.py run --out $OUT --seconds 570 --steps pytest,gap2k
    # device run 2 at once (warm), no carry (the Gram tiles stay), timeout_s S + 30,
    # S = the device time left less 60
    python3 benchmarks/gpu_session.py run --out $OUT --seconds S --steps bench,profile,gap2k
    python benchmarks/gpu_session.py unpack DIR       # here: what came back, into the tree

``run`` takes the named steps in the order named.  Each gets what is left of ``--seconds``
(at most its own cap, less ``RESERVE`` for what follows the last step), is killed with
every process it started when that runs out, and writes its output to a log in ``--out``;
a step that fails or is cut off does not stop the next, and one with less time left than
it needs is skipped.  ``OUT/session.json`` records the device and every step (commands,
exit statuses, seconds, cut off or skipped), rewritten after each; the last lines printed
are the same as a table; ``OUT/gpu_clocks.csv`` samples the GPU's clocks and power all
along.  The CIFAR-10 JPEG set travels compressed by xz (``PACKED_JPEG_SET``, 18 MiB
against 59) and the steps that read it restore it first (``inflate``).  The GAP-2K step
resumes from ``carry/work`` and packs what it
finished (the fitted weights and test chunks, not the Gram tiles) into
``OUT/gap2k_work.tar.NN`` parts, which ``unpack`` restores into ``carry/`` and keeps in
``SAVED_WORK``, so that ``prepare`` in a later session carries it again.  The Gram matrix
(2M pairs of depth 21) must finish within one warm machine's calls, since its tiles (47 MB)
would not travel back (on an H200 it took 152 s); a second call on the same machine that
carries nothing finds them still there.  Its parts leave room for the files of the steps
named after it in the same call.  The ``v50k-fixed`` step computes the CNTK-V column on
all 50,000 training images with the first and last layer fixed (a check of why CNTK-V at
depths 3 and 4 falls short of the paper; ~5 minutes on an H100) and brings its CSV back.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import lzma
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parents[1]
CARRY = Path("carry")
"""Relative to the repository root: the git-ignored folder a device call carries."""
DATA = CARRY / "data"  # the exact-pixel subset (the GPU tests, the benchmark), the JPEG set
JPEG_SET = DATA / "cifar10_jpeg.zip"  # all 60,000 JPEG files, restored by ``inflate``
PACKED_JPEG_SET = JPEG_SET.with_name(JPEG_SET.name + ".xz")
"""What travels of the JPEG set: its zip compressed by xz.  Every one of the 60,000 files
starts with the same 621 bytes (JPEG tables, the same for every image), which xz stores
once: 18.3 MiB against 59.3, so the whole set travels with the rest (the zip alone would
not).  xz checks its own integrity, so ``inflate`` restores the zip bit for bit or fails."""
WHEELS = CARRY / "whl"  # neural-tangents (the GPU image has jax) and pytest-xdist
WORK = CARRY / "work"
GAP2K_OUT = CARRY / "gap2k"
V50K_OUT = CARRY / "v50k_fixed"
V50K_CSV = "cntk_v_50k_fixed.csv"
"""In ``--out``: the table1.csv of the ``v50k-fixed`` step; ``unpack`` keeps it in
``V50K_RESULTS``."""
V50K_RESULTS = Path("studies/results/table1_fix")
RESULTS = Path("studies/results")  # the committed Table 1 (table1.csv, .md, .png)
SAVED_WORK = RESULTS / "table1_gap2k_work.tar"
"""Committed between GPU sessions while the CNTK-GAP-2K column is unfinished."""
NT_WHEELS = ("neural-tangents==0.6.5", "frozendict==2.5.1")
XDIST_WHEELS = ("pytest-xdist==3.8.0", "execnet==2.1.2")
"""For the GPU tests: most of their time is Triton compiling kernels, one at a time in one
process (44 tests in 129 s on the H200); TEST_WORKERS processes compile side by side."""
TEST_WORKERS = 8
SITE = "/tmp/ntkcheck-site"  # where the device call installs the carried wheels
PACK = "gap2k_work.tar"
PART_BYTES = 15 * 2**20  # a file from $OUT may hold 16 MiB
MAX_FILES = 8  # files that come back from $OUT
TRAVEL_BYTES = 64 * 2**20  # what a device call may send: the working tree and carry/
TAIL_LINES = 12  # of each step's log, printed as the step ends
NCU_SECTIONS = ("SpeedOfLight", "ComputeWorkloadAnalysis", "MemoryWorkloadAnalysis",
                "InstructionStats", "SchedulerStats", "WarpStateStats", "Occupancy",
                "LaunchStats", "SourceCounters")
NCU_METRICS = (  # why warps wait, and how busy each pipe is
    r"regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio",
    r"regex:sm__inst_executed_pipe_.*\.avg\.pct_of_peak_sustained_active",
    r"regex:sm__pipe_.*_cycles_active\.avg\.pct_of_peak_sustained_active",
)
CLOCKS = "gpu_clocks.csv"
"""In ``--out``: the GPU's clocks, power, temperature and load every CLOCK_SECONDS of the
call (nvidia-smi), to tell a slower sustained rate from a slower kernel."""
CLOCK_SECONDS = 5
RESERVE = 15.0
"""Seconds kept back from the steps for packing and the summary."""


@dataclass(frozen=True)
class Step:
    """One check: commands run in turn, their output together in ``OUT/<log>``.
    ``commands(seconds, out)`` builds them for the seconds the step is given."""

    name: str
    log: str
    cap: float  # seconds at most
    need: float  # skipped with fewer seconds than this left
    commands: Callable[[float, Path], list[list[str]]]
    env: Callable[[], dict[str, str]] = dict
    # run once the commands end, its record kept; given ``--out`` and the number of files
    # that the steps after this one in the call may still write there
    after: Callable[[Path, int], dict] | None = None
    ok: tuple[int, ...] = (0,)  # exit statuses of the last command that mean success
    outputs: tuple[str, ...] = ()  # what it writes to ``--out`` besides its log

    @property
    def files(self) -> int:
        """Files it may write to ``--out`` (a packing step's parts not counted)."""
        return 1 + len(self.outputs)


def _wheels(pins: Sequence[str], folder: Path = WHEELS) -> list[Path]:
    """The wheels in ``folder`` of the ``pins`` (name==version) that it holds."""
    found = []
    for pin in pins:
        name, version = pin.split("==")
        found += sorted(folder.glob(f"{name.replace('-', '_')}-{version}-*.whl"))
    return found


def _install(pins: Sequence[str]) -> list[list[str]]:
    """The command that installs the carried wheels of ``pins`` into SITE (none if none
    were carried)."""
    wheels = _wheels(pins)
    return [[sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
             "--no-compile", "--target", SITE, *map(str, wheels)]] if wheels else []


def _pytest(seconds: float, out: Path) -> list[list[str]]:
    tests = [sys.executable, "-m", "pytest", "-m", "gpu", "tests", "-q", "-rs",
             "-p", "no:cacheprovider", "--durations=15"]
    if len(_wheels(XDIST_WHEELS)) < len(XDIST_WHEELS):
        return [tests]
    return [*_install(XDIST_WHEELS), parallel_or_serial(tests, TEST_WORKERS)]


def parallel_or_serial(tests: list[str], workers: int) -> list[str]:
    """``tests`` (a pytest command line) in ``workers`` processes (pytest-xdist); where that
    ends in an exit status of 2 or more (interrupted, an internal or usage error: xdist did
    not run, not a failed test), again in one process."""
    parallel = shlex.join([*tests, "-n", str(workers)])
    return ["sh", "-c", f"{parallel}; rc=$?; if [ $rc -ge 2 ]; then echo \"[exit $rc in "
            f"{workers} processes: again in one]\"; {shlex.join(tests)}; else exit $rc; fi"]


def _bench(seconds: float, out: Path) -> list[list[str]]:
    # neural-tangents comes last in the benchmark, so a slow jax costs only its own rows
    bench = [sys.executable, "benchmarks/cntk_gpu.py", "--data-root", str(DATA),
             "--out", str(out / "cntk_gpu.json"), "--nt-seconds", "90"]
    return [*_install(NT_WHEELS), bench]


def _inflate() -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "inflate"]


def _reproduce(column: str, out: Path, *options: str) -> list[str]:
    return [sys.executable, "-m", "ntkcheck.cli", "reproduce", "table1", "--columns", column,
            "--device", "cuda", "--data-root", str(DATA), "--out", str(out), *options]


def _gap2k(seconds: float, out: Path) -> list[list[str]]:
    # stop between test chunks with time left to save the last one
    return [_inflate(), _reproduce("CNTK-GAP-2K", GAP2K_OUT, "--work", str(WORK),
                                   "--max-seconds", str(int(seconds - 20)))]


def _v50k_fixed(seconds: float, out: Path) -> list[list[str]]:
    return [_inflate(), _reproduce("CNTK-V", V50K_OUT, "--fix-first-last", "yes")]


def _bring_v50k_back(out: Path, later: int) -> dict:
    table = V50K_OUT / "table1.csv"
    if not table.exists():
        return {"csv": None}
    shutil.copy2(table, out / V50K_CSV)
    return {"csv": V50K_CSV}


def _profile(seconds: float, out: Path) -> list[list[str]]:
    # one depth-11 CNTK-GAP launch (the second: the first compiles), at the GPU's own clocks
    plain = ["ncu", "--clock-control", "none", "--kernel-name", "cntk_slices",
             "--launch-skip", "1", "--launch-count", "1",
             *(a for s in NCU_SECTIONS for a in ("--section", s))]
    script = [sys.executable, "benchmarks/profile_cntk.py"]
    detailed = [*plain, "--print-details", "all", "--metrics", ",".join(NCU_METRICS), *script]
    # an option or metric this ncu does not know must not cost the profile: then the plain one
    return [["sh", "-c", f"{shlex.join(detailed)} || {shlex.join([*plain, *script])}"]]


def _pack_gap2k(out: Path, later: int) -> dict:
    # parts in the files that come back, less those that the steps after this one may write
    return pack([WORK, GAP2K_OUT], out / PACK, max_files=MAX_FILES - _files(out) - later)


STEPS = {s.name: s for s in (
    Step("pytest", "gpu_pytest.log", cap=200, need=60, commands=_pytest,
         env=lambda: {"NTKCHECK_DATA": str(DATA), "PYTHONPATH": SITE}),
    # the profile (~60 s) before the timings, which a short budget cuts at their last rows
    Step("profile", "cntk_ncu.log", cap=120, need=40, commands=_profile),
    Step("bench", "cntk_gpu.log", cap=300, need=60, commands=_bench,
         env=lambda: {"PYTHONPATH": SITE}, outputs=("cntk_gpu.json",)),
    Step("gap2k", "gap2k.log", cap=600, need=120, commands=_gap2k, after=_pack_gap2k,
         ok=(0, 3)),  # 3: stopped in time between test chunks; the same call continues
    # 287 s of kernels at the 6.1M pairs/s of the trained column on an H100, five float64
    # solves of 50k x 50k, and decoding 60,000 JPEG files; not resumable (its Gram tiles
    # would fill 25 GB of disk), so it starts only with room to finish
    Step("v50k-fixed", "v50k_fixed.log", cap=560, need=400, commands=_v50k_fixed,
         after=_bring_v50k_back, outputs=(V50K_CSV,)),
)}


def _files(folder: Path) -> int:
    return sum(p.is_file() for p in folder.iterdir())


def _run_command(argv: Sequence[str], log, env: dict[str, str], seconds: float) -> dict:
    """``argv`` with its output appended to ``log``, killed (with every process it started)
    after ``seconds``: its exit status, seconds, and whether it was cut off."""
    start = time.monotonic()
    log.write(f"$ {' '.join(argv)}\n")
    log.flush()
    try:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)  # its own group, killed whole
    except OSError as error:
        log.write(f"could not start: {error}\n")
        return {"argv": list(argv), "rc": None, "seconds": 0.0, "error": str(error)}
    try:
        rc = process.wait(timeout=max(seconds, 0.0))
        cut = False
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        rc, cut = process.wait(), True
        log.write(f"\n[cut off after {seconds:.1f} s]\n")
    log.flush()
    return {"argv": list(argv), "rc": rc, "seconds": round(time.monotonic() - start, 1),
            "cut_off": cut}


def run_step(step: Step, seconds: float, out: Path, later: int = 0) -> dict:
    """``step``'s commands in turn within ``seconds`` in all; its record.  ``later``: the
    files that the steps after it in the call may write to ``out``."""
    deadline = time.monotonic() + seconds
    env = dict(os.environ)
    # The device machine runs the checkout uninstalled: a script under benchmarks/ finds
    # ntkcheck only through PYTHONPATH (pytest and ``python -m`` look in the working folder).
    for name, value in [("PYTHONPATH", str(ROOT)), *step.env().items()]:
        # prepended to a search path, else set
        env[name] = f"{value}{os.pathsep}{env[name]}" if name.endswith("PATH") and \
            env.get(name) else value
    record: dict = {"step": step.name, "given_seconds": round(seconds, 1), "log": step.log,
                    "commands": []}
    with (out / step.log).open("a") as log:
        for argv in step.commands(seconds, out):
            done = _run_command(argv, log, env, deadline - time.monotonic())
            record["commands"].append(done)
            if done.get("cut_off"):
                break
    last = record["commands"][-1] if record["commands"] else {}
    record.update(rc=last.get("rc"), ok=last.get("rc") in step.ok,
                  cut_off=bool(last.get("cut_off")),
                  seconds=round(sum(c["seconds"] for c in record["commands"]), 1))
    if step.after is not None:
        try:
            record["after"] = step.after(out, later)
        except Exception as error:  # noqa: BLE001 -- recorded; the session goes on
            record["after"] = {"error": f"{type(error).__name__}: {error}"}
    return record


def device() -> str | None:
    """The GPU as nvidia-smi names it (with its driver and memory), or None without one."""
    try:
        found = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
             "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return found.stdout.strip() or None


def run(steps: Sequence[Step], seconds: float, out: Path,
        reserve: float = RESERVE) -> dict:
    """Every step in turn inside ``seconds`` (see the module's docstring); the session's
    record, also written to ``OUT/session.json`` after each step."""
    start = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    session: dict = {"device": device(), "seconds": seconds, "steps": []}

    def write() -> None:
        session["wall_seconds"] = round(time.monotonic() - start, 1)
        (out / "session.json").write_text(json.dumps(session, indent=1) + "\n")

    write()
    with sampling_clocks(out / CLOCKS):
        _run_steps(steps, seconds - reserve, start, out, session, write)
    print(table(session), flush=True)
    return session


@contextlib.contextmanager
def sampling_clocks(path: Path, every: int = CLOCK_SECONDS) -> Iterator[None]:
    """nvidia-smi writes the GPU's clocks, power, temperature and load to ``path`` every
    ``every`` seconds while the block runs (nothing without nvidia-smi)."""
    query = ["nvidia-smi", "--query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,"
             "temperature.gpu,utilization.gpu", "--format=csv", "-l", str(every)]
    if shutil.which(query[0]) is None:
        yield
        return
    with path.open("w") as sink:
        sampler = subprocess.Popen(query, stdout=sink, stderr=subprocess.STDOUT)
        try:
            yield
        finally:
            sampler.terminate()
            sampler.wait()


def _run_steps(steps: Sequence[Step], seconds: float, start: float, out: Path,
               session: dict, write: Callable[[], None]) -> None:
    """``run``'s loop: each step with what is left of ``seconds`` since ``start``."""
    for i, step in enumerate(steps):
        left = seconds - (time.monotonic() - start)
        if left < step.need:
            session["steps"].append({"step": step.name, "skipped":
                                     f"{max(left, 0):.0f} s left, needs {step.need:.0f}"})
        else:
            print(f"[{step.name}] up to {min(step.cap, left):.0f} s", flush=True)
            later = sum(s.files for s in steps[i + 1:])
            session["steps"].append(run_step(step, min(step.cap, left), out, later))
            print(_tail(out / step.log, TAIL_LINES), flush=True)
        write()


def _tail(path: Path, lines: int) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def table(session: dict) -> str:
    """The session's steps, a line each, for the end of a device call's output."""
    lines = [f"device: {session['device']}", f"{'step':<8} {'seconds':>9}  status"]
    for s in session["steps"]:
        if "skipped" in s:
            lines.append(f"{s['step']:<8} {'-':>9}  skipped: {s['skipped']}")
            continue
        status = "cut off" if s["cut_off"] else f"exit {s['rc']}"
        if "error" in s.get("after", {}):
            status += f", then {s['after']['error']}"
        took = f"{s['seconds']:.0f}/{s['given_seconds']:.0f}"
        lines.append(f"{s['step']:<8} {took:>9}  {status} ({s['log']})")
    return "\n".join(lines)


def pack(sources: Sequence[Path], target: Path, max_files: int,
         part_bytes: int = PART_BYTES, cwd: Path = Path(".")) -> dict:
    """A tar of ``sources`` (folders relative to ``cwd``, those that exist) without Gram
    tiles (``train/``: a resumed column needs only its fit and test chunks), split into at
    most ``max_files`` parts ``<target>.00``, ``.01``, ... of at most ``part_bytes`` each."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for source in sources:
            if (cwd / source).exists():
                tar.add(cwd / source, arcname=str(source), filter=_without_gram_tiles)
    data = buffer.getvalue()
    parts = [data[i:i + part_bytes] for i in range(0, len(data), part_bytes)] or [b""]
    if len(parts) > max_files:
        raise ValueError(f"the packed work takes {len(data)} bytes, more than {max_files} "
                         f"files of {part_bytes} bytes that can come back")
    for old in target.parent.glob(target.name + ".*"):
        old.unlink()
    for i, part in enumerate(parts):
        target.with_name(f"{target.name}.{i:02d}").write_bytes(part)
    return {"bytes": len(data), "parts": len(parts)}


def _without_gram_tiles(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    return None if "train" in Path(info.name).parts else info


def unpack(source: Path, root: Path = ROOT) -> str:
    """What came back in ``source``, into the tree under ``root``: the ``v50k-fixed`` CSV
    into V50K_RESULTS, and the GAP-2K work (``_unpack_gap2k``).  Says what it did."""
    said = []
    if (source / V50K_CSV).is_file():
        (root / V50K_RESULTS).mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / V50K_CSV, root / V50K_RESULTS / V50K_CSV)
        said.append(f"CNTK-V on 50k images, first and last layer fixed: {V50K_RESULTS / V50K_CSV}")
    parts = sorted(source.glob(PACK + ".*"))
    if parts:
        said.append(_unpack_gap2k(parts, root))
    if not said:
        raise FileNotFoundError(f"neither {PACK}.NN parts nor {V50K_CSV} in {source}")
    return "\n".join(said)


def _unpack_gap2k(parts: Sequence[Path], root: Path) -> str:
    """Join the gap2k_work.tar.NN ``parts`` into ``root``/SAVED_WORK and extract it under
    ``root`` (carry/work, carry/gap2k).  Once the CNTK-GAP-2K column is finished, its cells
    go into ``root``/RESULTS (table1.csv, .md, .png) and SAVED_WORK is removed.  Says which."""
    saved = root / SAVED_WORK
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_bytes(b"".join(p.read_bytes() for p in parts))
    _extract(saved, root)
    _importable()
    from ntkcheck.studies import _files as files
    from ntkcheck.studies import table1
    from ntkcheck.studies import table1_report as report

    rows = [r for r in files.read_rows(root / GAP2K_OUT / "table1.csv")
            if r["column"] == "CNTK-GAP-2K"]
    if {int(str(r["depth"])) for r in rows} < set(table1.DEPTHS):
        return f"CNTK-GAP-2K unfinished: commit {SAVED_WORK}, which prepare carries again"
    results = root / RESULTS
    results.mkdir(parents=True, exist_ok=True)
    merged = table1.merge_rows(files.read_rows(results / "table1.csv"), rows)
    files.write_rows(results / "table1.csv", table1.FIELDS, merged)
    report.write_markdown(merged, results / "table1.md")
    report.write_figure(merged, results / "table1.png")
    saved.unlink()
    return f"CNTK-GAP-2K finished: its cells are in {RESULTS}/table1.csv (.md, .png)"


def _importable() -> None:
    """ntkcheck importable from this checkout (``run`` imports none of it: it needs no torch
    itself, and its steps import ntkcheck from the repository root)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def _extract(tar_path: Path, root: Path) -> None:
    with tarfile.open(tar_path) as tar:
        tar.extractall(root, filter="data")


def _stream_whole(source: IO[bytes], target: Path,
                  open_target: Callable[[Path], IO[bytes]]) -> None:
    """The stream ``source`` into ``target`` opened by ``open_target``: whole or absent,
    even if interrupted (written beside it, then renamed)."""
    partial = target.with_name(target.name + ".partial")
    with source, open_target(partial) as written:
        shutil.copyfileobj(source, written, 2**20)
    os.replace(partial, target)


def compress(source: Path, target: Path) -> None:
    """``source`` compressed by xz into ``target`` (whole or absent, even if interrupted)."""
    _stream_whole(source.open("rb"), target, lambda path: lzma.open(path, "wb"))


def inflate(root: Path = Path(".")) -> str:
    """On the device machine: ``root``/JPEG_SET from PACKED_JPEG_SET (relative to the
    working folder, as every step's paths are), unless it is there (a warm machine keeps it
    between calls).  Says which."""
    target = root / JPEG_SET
    if target.is_file():
        return f"{JPEG_SET} is there"
    # xz checks what it decompresses: a damaged pack raises, and no zip is left
    _stream_whole(lzma.open(root / PACKED_JPEG_SET), target, lambda path: path.open("wb"))
    return f"{JPEG_SET} restored from {PACKED_JPEG_SET}: {target.stat().st_size} bytes"


def prepare(root: Path = ROOT, data: str | None = None, wheels: bool = True) -> int:
    """Fill ``root``/carry with what the steps read on the device machine; the bytes that
    a call carrying it would send (the working tree and carry/)."""
    _importable()
    import ntkcheck as nc
    from ntkcheck.data.cifar10 import EXACT_SUBSET, JPEG_ZIP

    carry = root / CARRY
    (root / DATA).mkdir(parents=True, exist_ok=True)
    shutil.copy2(nc.data.data_root(data) / EXACT_SUBSET, root / DATA / EXACT_SUBSET)
    if not (root / PACKED_JPEG_SET).exists():
        compress(nc.data.data_root(data, JPEG_ZIP) / JPEG_ZIP, root / PACKED_JPEG_SET)
    missing = [p for p in (*NT_WHEELS, *XDIST_WHEELS) if not _wheels([p], root / WHEELS)]
    if wheels and missing:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                        "--only-binary=:all:", "-d", str(root / WHEELS), *missing],
                       check=True)
    if (root / SAVED_WORK).exists() and not (root / WORK).exists():
        _extract(root / SAVED_WORK, root)
    return _tree_bytes(root) + sum(p.stat().st_size for p in carry.rglob("*") if p.is_file())


def _tree_bytes(root: Path) -> int:
    """Bytes of the tracked and the untracked, not ignored files: what a call sends besides
    what it carries."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], cwd=root, capture_output=True,
                            check=True).stdout.split(b"\0")
    return sum((root / n.decode()).stat().st_size for n in listed
               if n and (root / n.decode()).is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    go = verbs.add_parser("run", help="on the device machine: the steps inside a budget")
    go.add_argument("--out", required=True, help="where logs and results go ($OUT)")
    go.add_argument("--seconds", type=float, required=True, help="the whole call's budget")
    go.add_argument("--steps", default=",".join(STEPS), help=f"among {', '.join(STEPS)}")
    ready = verbs.add_parser("prepare", help="here: fill carry/ for a device call")
    ready.add_argument("--data-root", default=None, help="the CIFAR-10 folder to copy from")
    ready.add_argument("--no-wheels", action="store_true", help="skip neural-tangents")
    back = verbs.add_parser("unpack", help="here: what came back (GAP-2K work, CSVs)")
    back.add_argument("source", help="the folder the call's files came back to")
    verbs.add_parser("inflate", help="on the device machine: the JPEG set from its xz")
    args = parser.parse_args(argv)
    try:
        if args.verb == "prepare":
            sent = prepare(data=args.data_root and str(Path(args.data_root).resolve()),
                           wheels=not args.no_wheels)
            print(f"a call carrying {CARRY} sends {sent / 2**20:.1f} MiB "
                  f"(at most {TRAVEL_BYTES // 2**20})")
            return 0 if sent <= TRAVEL_BYTES else 1
        if args.verb == "unpack":
            print(unpack(Path(args.source)))
            return 0
        if args.verb == "inflate":
            print(inflate())
            return 0
    except (OSError, ValueError, lzma.LZMAError, subprocess.CalledProcessError) as error:
        parser.error(str(error))
    names = [n for n in args.steps.split(",") if n]
    unknown = sorted(set(names) - set(STEPS))
    if unknown:
        parser.error(f"--steps must be among {', '.join(STEPS)}; got {', '.join(unknown)}")
    out = Path(args.out).resolve()
    os.chdir(ROOT)  # the steps name paths relative to the repository
    session = run([STEPS[n] for n in names], args.seconds, out)  # in the order named
    return 0 if all(s.get("ok", True) for s in session["steps"]) else 1


if __name__ == "__main__":
    sys.exit(main())
