"""`mbdl`: the command line of MBDL Studio.

    mbdl                      the GUI (headless default session when no display/GUI)
    mbdl gui [--config F] [--calibrated ARTIFACT_DIR ...]
    mbdl run [--config F] [--source URI ...] [--engine NAME ...] [--duration S] [--record F]
             [--rotate-min N --keep-gb G] [--health-s S] [--calibrated ARTIFACT_DIR ...]
    mbdl replay FILE [--engine NAME ...] [--speed X] [--record F] [--compare]
    mbdl info FILE
    mbdl repair FILE
    mbdl devices [--json]
    mbdl export FILE [--out DIR] [--format ome.tif|seq.mha|csv ...]
    mbdl export ARTIFACT [--fp16]     model.onnx (+ sha256 in the card)
    mbdl train NAME [--quick] [--out DIR] [--resume]
    mbdl train kalmannet --data FILE [--model lorenz] [--val-frac 0.2] [--epochs N] [--out DIR]
    mbdl calibrate RECORDING [--teacher rpca-fista] [--student corona-ceus] [--out DIR] [--epochs N]
                   [--max-windows N]      the student distilled from the teacher on a recording
    mbdl reproduce table2 | table2-independent | kalmannet | fig6 | fig7 | fig8 | fig9 | control | pnp | csgm
                   [--quick] [--out DIR]
    mbdl bench session | serial | gui | sparse | engines | comms | tracker NAME | smlm
    mbdl doctor [--json]

Errors print one line naming the input and the problem and exit with code 2;
`--debug` shows the traceback.
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
from pathlib import Path
from typing import Annotated

import typer
from typer.exceptions import TyperException

from drivers.errors import DriverError
from engines.errors import EngineError
from engines.optional_torch import TORCH_FIX
from mbdl_app.config import EngineConfig, SessionConfig, SourceConfig, default_config, load_config
from mbdl_app.errors import AppError, ConfigError
from mbdl_app.logs import setup_logging

app = typer.Typer(add_completion=False, no_args_is_help=False, pretty_exceptions_enable=False,
                  help="MBDL Studio: live model-based deep learning beside its baselines.")
bench_app = typer.Typer(help="Benchmarks: figures measured side by side in one run.")
app.add_typer(bench_app, name="bench")
reproduce_app = typer.Typer(help="Reproduce published tables: ours beside the published figures.")
app.add_typer(reproduce_app, name="reproduce")

EXPECTED = (AppError, DriverError, EngineError)
_ENGINE_SPEC = re.compile(
    r"^(?P<name>[\w.-]+)(?::(?P<backend>\w+))?(?:@(?P<source>[\w.-]+))?(?:/(?P<hop>\d+)(?:/(?P<lag>\d+))?)?$")


def parse_engine_spec(spec: str) -> EngineConfig:
    """`NAME[:BACKEND][@SOURCE][/HOP[/LAG]]`, e.g. `ekf`, `svd-filter@ceus`, `corona-ceus:onnxruntime`,
    `corona-ceus/1` (a sliding window: one call per new frame; default: the window, blocks),
    `corona-lite/1/10` (sliding, each window's centre frame published: 10 frames late).

    `@` may also name an engine given before (`ulm-lista@corona-ceus`): `build_config` turns
    that into a chain (the engine reads the other's output frames)."""
    m = _ENGINE_SPEC.match(spec)
    if not m or m["hop"] == "0" or (m["hop"] or "").startswith("0"):
        raise ConfigError(f"--engine {spec!r}: expected NAME[:BACKEND][@SOURCE][/HOP[/LAG]] (HOP >= 1)")
    return EngineConfig(name=m["name"], backend=m["backend"] or "auto", source=m["source"],
                        hop=int(m["hop"]) if m["hop"] else None, lag=int(m["lag"] or 0))


def source_name(uri: str, taken: set[str]) -> str:
    """A readable default name for a --source URI: `sim:ceus` -> `ceus`, file stem, ..."""
    if "=" in uri.split(":", 1)[0]:
        return uri.split("=", 1)[0]
    scheme, _, rest = uri.partition(":")
    base = rest.split("?", 1)[0]
    base = Path(base).stem if scheme != "sim" else base
    base = re.sub(r"[^A-Za-z0-9_.-]", "_", base) or scheme
    name, k = base, 2
    while name in taken:
        name, k = f"{base}{k}", k + 1
    return name


CONFIG_HELP = "Session TOML file, or the name of a shipped config (mbdl_app/sessions/: microscopy, ...)."


def build_config(config: Path | None, sources: list[str], engine_specs: list[str]) -> SessionConfig:
    """The session to run: a config file or the embedded default, with CLI overrides.

    --source replaces the config's sources (NAME=URI or URI); --engine replaces its engines.
    """
    cfg = load_config(config) if config else default_config()
    srcs = cfg.sources
    if sources:
        srcs, taken = [], set()
        for s in sources:
            name = source_name(s, taken)
            uri = s.split("=", 1)[1] if s.startswith(f"{name}=") else s
            taken.add(name)
            srcs.append(SourceConfig(name=name, uri=uri))
    engines_ = [parse_engine_spec(e) for e in engine_specs] if engine_specs else cfg.engines
    if engine_specs:  # NAME@LABEL of an earlier engine (and no source of that name) chains the two
        names = {s.name for s in srcs}
        engines_ = [e.model_copy(update={"source": None, "input": e.source})
                    if e.source not in names and e.source in {p.label for p in engines_[:i]} else e
                    for i, e in enumerate(engines_)]
    if sources and not engine_specs:
        names = {s.name for s in srcs}
        engines_ = [e for e in engines_ if e.source in names]
    try:
        return SessionConfig(sources=srcs, engines=engines_, record=cfg.record,
                             control=None if sources else cfg.control)  # --source drops the stage loop
    except ValueError as e:
        raise ConfigError(f"session: {e}") from None


def with_calibrated(cfg: SessionConfig, folders: list[Path]) -> SessionConfig:
    """`cfg` with an engine per artifact folder (--calibrated), on the first source of its kind."""
    from pydantic import ValidationError

    from mbdl_app.session.studio import artifact_engine

    if not folders:
        return cfg
    try:
        return SessionConfig(sources=cfg.sources, engines=[*cfg.engines, *map(artifact_engine, folders)],
                             record=cfg.record, control=cfg.control)
    except ValidationError as e:
        raise ConfigError(f"--calibrated: {e.errors()[0]['msg']}") from None


@app.callback(invoke_without_command=True)
def root(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
) -> None:
    """With no command: open the GUI, or run the default session headless without one."""
    setup_logging(logging.DEBUG if debug else logging.WARNING)
    if ctx.invoked_subcommand is None:
        from mbdl_app.launch import launch_default

        raise typer.Exit(launch_default())


@app.command()
def run(
    config: Annotated[Path | None, typer.Option("--config", "-c", help=CONFIG_HELP)] = None,
    source: Annotated[list[str] | None, typer.Option("--source", "-s",
                      help="Source URI (or NAME=URI); repeatable. Replaces the config's.")] = None,
    engine: Annotated[list[str] | None, typer.Option("--engine", "-e",
                      help="NAME[:BACKEND][@SOURCE][/HOP[/LAG]]; repeatable. Replaces the config's.")] = None,
    duration: Annotated[float | None, typer.Option("--duration", "-d",
                        help="Seconds to run (default: until the sources end or Ctrl-C).")] = None,
    record: Annotated[Path | None, typer.Option("--record", "-r", help="Record to this .h5 file.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No status line.")] = False,
    rotate_min: Annotated[float | None, typer.Option(
        "--rotate-min", help="A new recording file every N minutes (REC-000001-<UTC>.h5, ...).")] = None,
    keep_gb: Annotated[float | None, typer.Option(
        "--keep-gb", help="With --rotate-min: delete the oldest files past this many GB.")] = None,
    health_s: Annotated[float | None, typer.Option(
        "--health-s", help="A one-line health report every S seconds (for the journal).")] = None,
    calibrated: Annotated[list[Path] | None, typer.Option(
        "--calibrated", help="An artifact folder (mbdl calibrate's) to run beside the others; repeatable.")
                          ] = None,
) -> None:
    """Run a live session headless: a status line per second, a final table."""
    cfg = with_calibrated(build_config(config, source or [], engine or []), calibrated or [])
    from mbdl_app.session.headless import run_session
    from mbdl_app.session.rotation import from_options

    record, housekeeping = from_options(record, rotate_min, keep_gb, health_s)
    raise typer.Exit(run_session(cfg, duration, record, quiet, housekeeping))


@app.command()
def replay(
    file: Annotated[Path, typer.Argument(help="A recording (.h5).")],
    engine: Annotated[list[str] | None, typer.Option("--engine", "-e",
                      help="Engines to replay through (default: those recorded).")] = None,
    speed: Annotated[float, typer.Option(help="1 = recorded timing, 2 = twice as fast.")] = 1.0,
    record: Annotated[Path | None, typer.Option("--record", "-r", help="Record the replay.")] = None,
    compare: Annotated[bool, typer.Option(help="Compare replayed results with the recorded ones "
                                          "(needs --record).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Replay a recording through engines (the recorded ones by default)."""
    from mbdl_app.session.headless import run_session
    from mbdl_app.session.replay import compare_results, replay_config

    if compare and record is None:
        raise ConfigError("--compare needs --record FILE (the replay's results are compared "
                          "with the recording's)")
    engines_ = [parse_engine_spec(e) for e in engine] if engine else None
    cfg = replay_config(file, engines_, speed)
    rc = run_session(cfg, None, record, quiet)
    if compare and record is not None:
        for key, c in compare_results(file, record).items():
            print(f"{key}: {c['common']} results at common inputs, "
                  f"max |replay - recorded| = {c['max_abs_diff']:.3g}")
    raise typer.Exit(rc)


@app.command()
def info(file: Annotated[Path, typer.Argument(help="A recording (.h5).")]) -> None:
    """What a recording holds: streams, results, config, versions."""
    from mbdl_app.session.replay import describe_json

    print(describe_json(file))


@app.command()
def repair(file: Annotated[Path, typer.Argument(help="A recording (.h5) whose writer was killed.")]) -> None:
    """Make a recording a killed writer left open in any HDF5 reader (h5clear -s), keeping
    every committed item; says what it kept. `info` and `replay` do this by themselves."""
    from drivers.recording import repair_recording

    report = repair_recording(file)
    if report is None:
        print(f"{file}: closed by its writer; nothing to repair")
        return
    print(f"{file}: cleared the open-for-write flags its writer left")
    for series, n in report.kept.items():
        print(f"  {series}: kept {n} committed rows, dropped {report.dropped[series]} uncommitted")


@app.command()
def devices(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Cameras and serial ports found here, and whether each can be opened."""
    import json

    from rich.console import Console
    from rich.table import Table

    from drivers.discovery import list_devices

    found = list_devices()
    if as_json:
        print(json.dumps(found, indent=2))
        return
    table = Table(title="Devices")
    for col in ("kind", "uri", "name", "opens", "error"):
        table.add_column(col)
    for d in found:
        table.add_row(d["kind"], d["uri"], str(d.get("name") or ""), "yes" if d["opens"] else "no",
                      str(d.get("error") or ""))
    Console(width=None if sys.stdout.isatty() else 160).print(table)
    if not found:
        print("no cameras or serial ports found")


def artifact_folder(target: str) -> Path | None:
    """The artifact folder `target` names (a folder with card.json, a shipped artifact or one in
    the user cache), or None when it names none (then it is a recording)."""
    import exported_models
    from mbdl_app.training.artifact import CARD, cache_dir

    for folder in (Path(target), exported_models.ROOT / target, cache_dir("artifacts") / target):
        if (folder / CARD).is_file():
            return folder
    return None


@app.command()
def export(
    target: Annotated[str, typer.Argument(help="An artifact (name or folder): its model.onnx; "
                                                "or a recording (.h5): its frames and tracks.")],
    fp16: Annotated[bool, typer.Option("--fp16", help="Artifacts: also model.fp16.onnx "
                                                      "(float16 inside, for TensorRT 11).")] = False,
    out: Annotated[Path, typer.Option("--out", "-o", help="Recordings: output folder.")] = Path("export"),
    fmt: Annotated[list[str] | None, typer.Option("--format", "-f",
                   help="Recordings: ome.tif (frames), seq.mha (frames, 3D Slicer), csv (tracks).")] = None,
) -> None:
    """Export an artifact to ONNX (model.onnx + sha256 in its card), or a recording: frames to
    OME-TIFF / .seq.mha, tracks and results to CSV."""
    folder = artifact_folder(target)
    if folder is not None:
        from engines.export import export_artifact

        entry = export_artifact(folder, fp16=fp16)
        print(f"{folder / 'model.onnx'}  opset {entry['opset']}  sha256 {entry['sha256']}")
        if entry["fp16"]:
            print(f"{folder / entry['fp16']['file']}  sha256 {entry['fp16']['sha256']}")
        return
    if not Path(target).exists():
        raise AppError(f"{target}: neither an artifact (no {target}/card.json here, in exported_models/ "
                       "or in the user cache) nor a recording file")
    from drivers.export import export_recording

    for path in export_recording(Path(target), out, tuple(fmt) if fmt else ("ome.tif", "csv")):
        print(path)


@app.command()
def train(
    name: Annotated[str, typer.Argument(help="Recipe name, e.g. lista-cs (see the error for the list).")],
    quick: Annotated[bool, typer.Option(help="A tiny version that finishes in seconds.")] = False,
    out: Annotated[Path | None, typer.Option("--out", "-o",
                   help="Folder that receives NAME/ (default: exported_models/).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run from its checkpoints.")] = False,
    data: Annotated[Path | None, typer.Option(help="Your trajectories (NPZ/HDF5: x (N,T,n), y (N,T,m), "
                    "optional x0 (N,n)); NAME is then a tracker architecture, e.g. kalmannet.")] = None,
    model: Annotated[str, typer.Option(help="With --data: the state-space model, lorenz | lorenz-rot "
                     "[:key=value,...].")] = "lorenz",
    val_frac: Annotated[float, typer.Option(help="With --data: fraction held out for validation.")] = 0.2,
    epochs: Annotated[int, typer.Option(help="With --data: passes over the training sequences.")] = 20,
) -> None:
    """Train one artifact with its recipe: NAME/card.json + weights.safetensors.

    Checkpoints go to the user cache (removed after a successful run) so that --resume
    continues an interrupted one. With --data FILE, NAME is a tracker architecture trained
    on FILE's trajectories (mbdl_app/training/user_tracking.py).
    """
    import json
    import shutil

    if data is not None:
        from mbdl_app.training.artifact import cache_dir
        from mbdl_app.training.user_tracking import train_on_file

        res = train_on_file(name, data, model=model, out=cache_dir("artifacts") if out is None else out,
                            val_frac=val_frac, epochs=epochs)
        print(f"{res.folder}  best epoch {res.best_epoch}: validation MSE {res.best_val_db} dB")
        return

    import exported_models
    from mbdl_app.training.artifact import cache_dir
    from mbdl_app.training.recipes import get_recipe

    recipe = get_recipe(name)
    checkpoints = cache_dir("checkpoints") / (f"{name}-quick" if quick else name)
    folder = recipe.run(exported_models.ROOT if out is None else out, quick=quick, resume=resume,
                        checkpoint_dir=checkpoints)
    shutil.rmtree(checkpoints, ignore_errors=True)  # only an interrupted run needs them
    metrics = json.loads((folder / "card.json").read_text(encoding="utf-8"))["metrics"]
    shown = {k: v for k, v in metrics.items() if not isinstance(v, (list, dict))}
    print(f"{folder}  {json.dumps(shown)}")


@app.command()
def calibrate(
    recording: Annotated[Path, typer.Argument(help="A recording (.h5) with an I/Q frame stream.")],
    teacher: Annotated[str, typer.Option(help="The model-based solver whose long run is the target.")
                       ] = "rpca-fista",
    student: Annotated[str, typer.Option(help="The shipped network to fine-tune.")] = "corona-ceus",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="The artifact folder to write "
                   "(default: the user data folder, calibrated/STUDENT-cal-RECORDING).")] = None,
    epochs: Annotated[int, typer.Option(help="Passes over the training windows.")] = 3,
    max_windows: Annotated[int, typer.Option(help="Most windows the teacher solves (its time dominates).")
                           ] = 400,
    teacher_iterations: Annotated[int, typer.Option(help="Iterations of the teacher.")] = 200,
    batch_size: Annotated[int, typer.Option(help="Windows per training step.")] = 8,
    lr: Annotated[float, typer.Option(help="Adam's learning rate (cosine decay to 2 %).")] = 1e-3,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Calibrate a shipped network on your recording against its model-based teacher (no labels):
    an artifact folder (card, weights, model.onnx) to run beside the shipped one (--calibrated)."""
    from mbdl_app.training.calibrate import CalibrationConfig, run_calibration

    run_calibration(recording, CalibrationConfig(teacher=teacher, student=student, epochs=epochs,
                                                 max_windows=max_windows, batch_size=batch_size, lr=lr,
                                                 teacher_iterations=teacher_iterations), out, quiet)


@bench_app.command("serial")
def bench_serial(
    out: Annotated[Path, typer.Option(help="Folder for the JSON report.")] = Path("bench_out"),
    rate: Annotated[float, typer.Option(help="Lines per second.")] = 1000.0,
    duration: Annotated[float, typer.Option(help="Seconds.")] = 60.0,
) -> None:
    """A pty-backed serial sensor at RATE lines/s: lost lines and parse latency."""
    from mbdl_app.bench.serial_bench import run_serial_bench

    rep = run_serial_bench(out, rate=rate, duration=duration)
    raise typer.Exit(0 if rep.get("lost", 1) == 0 else 1)


def _gui_entry(name: str):
    from mbdl_app.launch import gui_entry

    fn = gui_entry(name)
    if fn is None:
        raise AppError("the GUI is not installed here (pip install 'mbdl-studio[gui]')")
    return fn


@app.command()
def gui(
    config: Annotated[Path | None, typer.Option("--config", "-c", help=CONFIG_HELP)] = None,
    calibrated: Annotated[list[Path] | None, typer.Option(
        "--calibrated", help="An artifact folder (mbdl calibrate's) to add beside the running engines.")
                          ] = None,
) -> None:
    """The desktop GUI on a session config (default: the embedded session)."""
    from mbdl_app.launch import display_available

    run_gui = _gui_entry("run")
    if not display_available():
        raise AppError("no display found (DISPLAY/WAYLAND_DISPLAY unset); use `mbdl run` "
                       "for a headless session, or set QT_QPA_PLATFORM=offscreen")
    if config is not None:
        load_config(config)  # a malformed config is a one-line error before Qt starts
    for folder in calibrated or []:
        from mbdl_app.session.studio import artifact_engine

        artifact_engine(folder)  # so is a folder without a card
    raise typer.Exit(run_gui(config, calibrated) if calibrated else run_gui(config))


@bench_app.command("gui")
def bench_gui(
    out: Annotated[Path, typer.Option(help="Folder for the JSON report.")] = Path("bench_out"),
    duration: Annotated[float, typer.Option(help="Seconds measured (after a 3 s warm-up).")] = 30.0,
) -> None:
    """GUI display rate and event-loop lag on the default session (offscreen if no display)."""
    raise typer.Exit(_gui_entry("bench")(out, duration))


@bench_app.command("session")
def bench_session(
    out: Annotated[Path, typer.Option(help="Folder for the JSON report.")] = Path("bench_out"),
    duration: Annotated[float, typer.Option(help="Seconds for each throughput run.")] = 60.0,
    soak: Annotated[float, typer.Option(help="Seconds of the 2x-real-time soak run.")] = 600.0,
) -> None:
    """Session throughput, recorder losslessness and memory growth (issue targets)."""
    from mbdl_app.bench.session_bench import run_all

    raise typer.Exit(run_all(out, duration, soak))


@bench_app.command("ceus")
def bench_ceus(
    out: Annotated[Path, typer.Option(help="Folder for ceus_live.json.")] = Path("bench_out"),
    duration: Annotated[float, typer.Option(help="Seconds of the block run (the sliding run: half).")] = 60.0,
    size: Annotated[int, typer.Option(help="Frame height and width.")] = 128,
    sliding: Annotated[bool, typer.Option(help="Issue 15: each of --engines alone at hop 1, fig6 MSE, CPU "
                                          "limit (ceus_sliding.json; --duration per run).")] = False,
    rounds: Annotated[int, typer.Option(help="--sliding: rounds per engine and thread count.")] = 2,
    rate: Annotated[float, typer.Option(help="--sliding: source frames/s (the clinician path: 20).")] = 100.0,
    engines: Annotated[str, typer.Option(help="--sliding: engines, comma-separated; the last is the "
                                         "target's.")] = "corona-ceus,corona-fast,corona-lite",
    threads: Annotated[str, typer.Option(help="--sliding: intra-op thread counts, comma-separated.")] = "1,2",
) -> None:
    """Live CORONA beside RPCA-FISTA on sim:ceus: results/s, windows/s, p50/p99 (issue 4's target)."""
    if sliding:
        from mbdl_app.bench.ceus_sliding import run_sliding_bench

        try:
            names = tuple(n.strip() for n in engines.split(",") if n.strip())
            counts = tuple(int(t) for t in threads.split(",") if t.strip())
            code = run_sliding_bench(out, duration, size, rounds, counts, names, rate)
        except ValueError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        raise typer.Exit(code)
    from mbdl_app.bench.ceus_bench import run_ceus_bench

    raise typer.Exit(run_ceus_bench(out, duration, size))


@bench_app.command("comms")
def bench_comms(
    out: Annotated[Path, typer.Option(help="Folder for comms_live.json.")] = Path("bench_out"),
    duration: Annotated[float, typer.Option(help="Seconds of the run.")] = 60.0,
    speed: Annotated[float, typer.Option(help="Times real time (2: 20,000 symbols/s per stream).")] = 1.0,
) -> None:
    """The comms session: each symbol detector's symbols/s and end-to-end latency (issue 16's target)."""
    from mbdl_app.bench.comms_bench import run_comms_bench

    raise typer.Exit(run_comms_bench(out, duration, speed))


@bench_app.command("sparse")
def bench_sparse(
    out: Annotated[Path, typer.Option(help="Folder for the CSV, JSON and PNG.")] = Path("bench_out/sparse"),
    n: Annotated[int, typer.Option(help="Held-out problems per noise setting.")] = 1000,
    quick: Annotated[bool, typer.Option(help="A tiny problem and quick-trained models (seconds).")] = False,
) -> None:
    """Sparse coding: NMSE per layer of ISTA/FISTA/ADMM and the learned methods, time, FISTA match."""
    from mbdl_app.bench.sparse_bench import run_sparse_bench

    run_sparse_bench(out, n=n, quick=quick)


@bench_app.command("tracker")
def bench_tracker(
    name: Annotated[str, typer.Argument(help="A tracker engine, e.g. kalmannet-lorenz or ekf.")],
    out: Annotated[Path, typer.Option(help="Folder for tracker_NAME.json.")] = Path("bench_out"),
    steps: Annotated[int, typer.Option(help="Timed batch-1 steps.")] = 5000,
    threads: Annotated[int, typer.Option(help="torch intra-op threads.")] = 2,
) -> None:
    """Batch-1 step latency (p50, p99) of one tracker on a Lorenz trajectory."""
    import json

    from mbdl_app.bench.tracker_bench import run_tracker_bench

    print(json.dumps(run_tracker_bench(name, out, steps=steps, threads=threads)))


@bench_app.command("engines")
def bench_engines(
    out: Annotated[Path, typer.Option(help="Folder for engines.json.")] = Path("bench_out"),
    name: Annotated[list[str] | None, typer.Option("--name", "-n",
                    help="Artifact(s); default: all shipped.")] = None,
    backend: Annotated[list[str] | None, typer.Option("--backend", "-b",
                       help="torch, onnxruntime, tensorrt (default: all three).")] = None,
    repeats: Annotated[int, typer.Option(help="Batch-1 calls per backend.")] = 300,
    throughput_repeats: Annotated[int, typer.Option(help="Calls per backend at batch 8 and 32.")] = 30,
) -> None:
    """Each artifact on each backend: latency p50/p99, throughput, first-call time, memory; ORT/torch."""
    from mbdl_app.bench.engines_bench import BACKENDS, run_engines_bench

    unknown = sorted(set(backend or ()) - set(BACKENDS))
    if unknown:
        raise ConfigError(f"--backend {', '.join(unknown)}: expected one of {', '.join(BACKENDS)}")
    run_engines_bench(out, name, tuple(backend) if backend else BACKENDS, repeats, throughput_repeats)


@app.command()
def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Versions, GPUs, engine backends, cache dir, whether Qt opens a window, devices."""
    import json

    from mbdl_app.doctor import collect, render

    report = collect()
    print(json.dumps(report, indent=2) if as_json else render(report))


def _reproduce(experiment: str, out: Path, quick: bool) -> None:
    from mbdl_app.experiments.tracking import run_experiment

    run_experiment(experiment, out / experiment, quick=quick)


@reproduce_app.command("table2")
def reproduce_table2(
    out: Annotated[Path, typer.Option(help="Folder for the CSV, JSON and PNG.")] = Path("reproduce_out"),
    quick: Annotated[bool, typer.Option(help="2 short sequences per set (seconds): a smoke run.")] = False,
) -> None:
    """Seed Table 2 (sampling mismatch, T = 3000): EKF, UKF, PF, KalmanNet, model-based RNN."""
    _reproduce("table2", out, quick)


@reproduce_app.command("table2-independent")
def reproduce_table2_independent(
    out: Annotated[Path, typer.Option(help="Folder for the CSV and JSON.")] = Path("reproduce_out"),
    quick: Annotated[bool, typer.Option(help="2 short sequences (seconds): a smoke run.")] = False,
) -> None:
    """Table 2 on independent Lorenz data (scipy DOP853, random starts on the attractor), and every
    tracker at 0 / 10 / 50 % missing observations (issue 17)."""
    from mbdl_app.experiments.lorenz_independent import run_independent

    report = run_independent(out / "table2-independent", quick=quick)
    print(f"{out / 'table2-independent'}  {report.get('target', {})}")


@reproduce_app.command("kalmannet")
def reproduce_kalmannet(
    out: Annotated[Path, typer.Option(help="Folder for the CSV, JSON and PNG.")] = Path("reproduce_out"),
    quick: Annotated[bool, typer.Option(help="2 short sequences per set (seconds): a smoke run.")] = False,
) -> None:
    """The five KalmanNet Lorenz settings of ANCHORS.md, every filter beside the published MSE."""
    _reproduce("kalmannet", out, quick)


@reproduce_app.command("fig6")
def reproduce_fig6(
    out: Annotated[Path, typer.Option(help="Folder for the CSV, JSON and PNG.")] = Path("reproduce_out"),
    quick: Annotated[bool, typer.Option(help="4 small windows, 20 FISTA iterations: a smoke run.")] = False,
    corona: Annotated[str, typer.Option(help="CORONA artifact (name or folder).")] = "corona-ceus",
    resnet: Annotated[str, typer.Option(help="ResNet artifact (name or folder).")] = "resnet-ceus",
) -> None:
    """Seed Fig. 6: MSE of S vs RPCA-FISTA iterations and CORONA layers, ResNet and SVD filter lines."""
    from mbdl_app.experiments.fig6 import run_fig6

    run_fig6(out / "fig6", quick=quick, corona=corona, resnet=resnet)


@reproduce_app.command("fig7")
def reproduce_fig7(
    out: Annotated[Path, typer.Option(help="Folder for the CSV, JSON and PNG.")] = Path("reproduce_out"),
    quick: Annotated[bool, typer.Option(help="8 frames of 24 x 24, FISTA 10 iterations (smoke).")] = False,
    lista: Annotated[str, typer.Option(help="ULM LISTA artifact (name or folder).")] = "ulm-lista",
    corona: Annotated[str, typer.Option(help="Clutter separator chained before ulm-lista (name or folder).")]
    = "corona-ceus",
    chained: Annotated[str, typer.Option(help="Also chain this ULM artifact (folder, e.g. from "
                                               "`mbdl train ulm-chained`) after the separator.")] = "",
    separator: Annotated[str, typer.Option(help="Run this separator (folder, e.g. from `mbdl train "
                                                 "corona-ulm`) before --chained: a joint pair.")] = "",
    sliding: Annotated[bool, typer.Option(help="Also chain ulm-lista after the separator on a sliding "
                                               "window (hop 1, centre frame kept; its S and D - L).")]
    = False,
    mc: Annotated[str, typer.Option(help="Motion-compensated separator chained into ulm-lista (name or "
                                         "folder; '' skips the row).")] = "corona-mc",
) -> None:
    """Seed Fig. 7: ULM maps of the conv LISTA, FISTA and coarse peaks vs the true vessels; Jaccard, RMSE;
    and the chain CORONA -> ulm-lista on the data."""
    from mbdl_app.experiments.fig7 import run_fig7

    run_fig7(out / "fig7", quick=quick, lista=lista, corona=corona, chained=chained or None,
             separator=separator or None, sliding=sliding, mc=mc or None)


@reproduce_app.command("fig8")
def reproduce_fig8(
    out: Annotated[Path, typer.Option(help="Folder for the CSV, JSON and PNG.")] = Path("reproduce_out"),
    quick: Annotated[bool, typer.Option(help="16 x 16 stacks of 20 frames, SPARCOM 10/40 iterations.")]
    = False,
    lsparcom: Annotated[str, typer.Option(help="LSPARCOM engine (artifact name).")] = "lsparcom",
    deep_storm: Annotated[str, typer.Option(help="Deep-STORM engine (artifact name).")] = "deep-storm",
) -> None:
    """Seed Fig. 8: SR images of SPARCOM (100, 400 iterations), LSPARCOM, Deep-STORM and smlm-fit on held-out
    sim:smlm stacks (sparse, dense); image correlation, Jaccard, efficiency, CPU time per stack."""
    from mbdl_app.experiments.fig8 import run_fig8

    run_fig8(out / "fig8", quick=quick, lsparcom=lsparcom, deep_storm=deep_storm)


@bench_app.command("smlm")
def bench_smlm(
    out: Annotated[Path, typer.Option(help="Folder for smlm.json.")] = Path("bench_out"),
    quick: Annotated[bool, typer.Option(help="Small stacks, few iterations (smoke).")] = False,
    live: Annotated[float, typer.Option(help="Seconds of the live microscopy session (0: skip it).")] = 60.0,
) -> None:
    """The microscopy targets in one run: LSPARCOM vs SPARCOM-100 (Jaccard, image correlation, time per
    stack), Deep-STORM beside them, LSPARCOM ONNX Runtime / torch; then the live microscopy session
    (64 x 64 at 100 frames/s, recorded): frames lost, map refresh, p99 latencies."""
    from mbdl_app.bench.smlm_bench import run_smlm_bench

    report = run_smlm_bench(out, quick=quick)
    if live > 0:
        from mbdl_app.bench.smlm_live import add_live_part

        add_live_part(report, out, duration=live)
    raise typer.Exit(0 if all(t.get("met") for t in report["targets"].values()) else 1)


@reproduce_app.command("fig9")
def reproduce_fig9(
    out: Annotated[Path, typer.Option(help="Folder for the CSV, JSON and PNG.")] = Path("reproduce_out"),
    quick: Annotated[bool, typer.Option(help="2 channels x 2 SNRs, tiny training budgets (smoke).")] = False,
) -> None:
    """Seed Fig. 9: SER vs SNR of model-based SP/Viterbi, the learned factor graphs and the SBRNN, with
    perfect and uncertain CSI, averaged over 20 channels; nets trained on the fly; same-run timings."""
    from mbdl_app.experiments.fig9 import run_fig9

    run_fig9(out / "fig9", quick=quick)


@reproduce_app.command("pnp")
def reproduce_pnp(
    out: Annotated[Path, typer.Option(help="Folder for the CSV, JSON and PNG.")] = Path("reproduce_out"),
    quick: Annotated[bool, typer.Option(help="A 64 x 64 crop, 32 x 32 frames, few iterations.")] = False,
    bm3d: Annotated[bool, typer.Option(help="Run the BM3D baseline (if bm3d is installed).")] = True,
) -> None:
    """Seed Ex. 20: PnP-ADMM / PnP-HQS with the dncnn denoiser vs TV-ADMM, BM3D and the denoiser alone on
    the held-out image at sigma 25/255; deblurring of a sim:smlm and a sim:ceus frame."""
    import json

    from mbdl_app.experiments.pnp import run_pnp

    result = run_pnp(out / "pnp", quick=quick, bm3d=bm3d)
    print(f"{out / 'pnp'}  {json.dumps(result['psnr_db'])}  {json.dumps(result['targets'])}")


@reproduce_app.command("csgm")
def reproduce_csgm(
    out: Annotated[Path, typer.Option(help="Folder for the CSV, JSON and PNG.")] = Path("reproduce_out"),
    quick: Annotated[bool, typer.Option(help="3 values of m, a few digits, short searches (smoke).")] = False,
) -> None:
    """Seed Ex. 21: CSGM with the vae-digits decoder vs the tuned Lasso, error vs the number of Gaussian
    measurements m on held-out digits."""
    import json

    from mbdl_app.experiments.csgm import run_csgm

    result = run_csgm(out / "csgm", quick=quick)
    print(f"{out / 'csgm'}  {json.dumps(result['targets'])}")


@reproduce_app.command("control")
def reproduce_control(
    out: Annotated[Path, typer.Option(help="Folder for the CSV, JSON and PNG.")] = Path("reproduce_out"),
    quick: Annotated[bool, typer.Option(help="Tiny Monte Carlo and tuning (smoke).")] = False,
) -> None:
    """Issue 17 / seed Ex. 6-8, 12: closed-loop cost J of LQG (oracle, mismatched KF, KalmanNet, KF tuned on
    J), box-constrained MPC on the CV plant, and LQR at the Lorenz equilibrium with EKF / KalmanNet."""
    from mbdl_app.experiments.control import run_control

    run_control(out / "control", quick=quick)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one-line errors, exit code 2, `--debug` for tracebacks."""
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        rc = app(args=argv, standalone_mode=False, prog_name="mbdl")
    except EXPECTED as e:
        if debug:
            traceback.print_exc()
        print(f"mbdl: error: {e}", file=sys.stderr)
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except TyperException as e:  # usage errors: typer's own click raises these
        e.show()
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        sys.exit(130)
    except ModuleNotFoundError as e:  # the torch-free runtime install (issue 18): say what is missing
        if (e.name or "").split(".")[0] != "torch":
            raise
        if debug:
            traceback.print_exc()
        words = [a for a in argv if not a.startswith("-")]
        command = " ".join(words[:2] if words[:1] in (["bench"], ["reproduce"]) else words[:1])
        print(f"mbdl {command} needs torch: {TORCH_FIX}", file=sys.stderr)
        sys.exit(2)
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
