"""`mmtm bench [loader|train|render]`: throughput figures side by side, as ratios, in one run."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from mmtm.cli.errors import user_errors
from mmtm.cli.help import App
from mmtm.cli.values import int_list, view_pair
from mmtm.loaders.errors import UserError
from mmtm.loaders.output import check_output_file
from mmtm.training.presets import AUTO, AUTO_HELP, shown

app = App(
    help="Loader, training and rendering throughput, side by side as ratios; `mmtm bench --data D` runs the "
    "loader and training benches.\n\n"
    "\b\nExamples:\n  mmtm bench --data demo/data\n  mmtm bench loader --data demo/data --json\n"
    "  mmtm bench train --data demo/data --device cuda --preset paper\n  mmtm bench render --workers 2",
    no_args_is_help=False)

DATA = typer.Option(..., "--data", help="Prepared dataset folder (from `mmtm prep`).")
JSON_OUT = typer.Option(False, "--json", help="Print one JSON object (also written to --save).")
SAVE = typer.Option(None, "--save", show_default="bench.json, bench-loader.json, bench-train.json, bench-pack.json "
                                                "or bench-render.json", help="Write the JSON here.")
PRESET = typer.Option(AUTO, "--preset", help=f"Model size: paper or demo (or shortcut, digits); {AUTO_HELP}.")


def _emit(result: dict, path: Path, as_json: bool, table: Table) -> None:
    from mmtm.loaders.atomic import atomic_write_text
    atomic_write_text(path, json.dumps(result, indent=2) + "\n")
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    Console(width=max(Console().width, 100)).print(table)
    typer.echo(f"wrote {path}")


def _table(title: str, rows: list[tuple[str, str, str]]) -> Table:
    t = Table(title=title)
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_column("ratio", justify="right")
    for row in rows:
        t.add_row(*row)
    return t


def _loader_rows(r: dict) -> list[tuple[str, str, str]]:
    """images/s per backend (2 images per sample), with its ratio to torch and to the in-memory ceiling."""
    res = r["results"]
    base = res.get("torch", {}).get("images_per_s")
    ceiling = res.get("memory", {}).get("images_per_s")
    rows = []
    for name, v in res.items():
        ips = v["images_per_s"]
        ratio = " · ".join(x for x in (f"{ips / base:.2f}× torch" if base else "",
                                       f"{ips / ceiling:.0%} of memory" if ceiling else "") if x)
        rows.append((f"loader {name} images/s ({v['cpu_ms_per_image']:.2f} CPU ms/image)", f"{ips:.0f}", ratio))
    return rows


def _train_rows(r: dict) -> list[tuple[str, str, str]]:
    """Per batch size: end to end and compute only, eager and (on CUDA) graph steps, and their ratios."""
    rows = []
    device = r["config"]["device"]
    for res in r["results"]:
        steps = ("eager" if not res["cuda_graphs"] else "CUDA graphs" if not res["capture_failed"]
                 else "eager after a failed capture")
        how = f"batch {res['batch_size']}, {steps}, {device}"
        eager = next(e for e in r["results"] if e["batch_size"] == res["batch_size"] and not e["cuda_graphs"])
        speedup = res["end_to_end_samples_per_s"] / eager["end_to_end_samples_per_s"]
        rows += [
            (f"train end to end samples/s ({how}, loader {res['loader']})", f"{res['end_to_end_samples_per_s']:.1f}",
             f"{res['end_to_end_over_compute']:.2f}× compute"
             + (f" · {speedup:.2f}× eager" if res["cuda_graphs"] else "")),
            (f"train compute only samples/s ({how})", f"{res['compute_only_samples_per_s']:.1f}",
             f"{res['compute_steps_per_s']:.1f} steps/s"),
            (f"train data wait share of step time ({how})", f"{res['data_wait_share']:.1%}", "target ≤ 5%"),
            (f"train steps by mode ({how})", _modes(res["graph_replays"], res["eager_steps"]),
             f"graphs off: {res['capture_failed']}" if res["capture_failed"] else ""),
        ]
        if res["gpu_busy_ms_per_step"] is not None:
            wall_ms = 1000 / res["compute_steps_per_s"]
            rows.append((f"GPU busy ms per step ({how})", f"{res['gpu_busy_ms_per_step']:.2f}",
                         f"{res['gpu_busy_ms_per_step'] / wall_ms:.0%} of {wall_ms:.2f} ms wall"))
    return rows


def _modes(graph: dict[str, int], eager: dict[str, int]) -> str:
    """Per step mode, the steps that ran as graph replays and eager."""
    return ", ".join(f"{mode} {graph.get(mode, 0)} graph + {eager.get(mode, 0)} eager"
                     for mode in sorted(graph.keys() | eager.keys()))


def _render_rows(r: dict) -> list[tuple[str, str, str]]:
    render, prep, projection = r["render"], r["prep"], r["projection"]
    rows = [
        (f"render 1 process views/s ({render['faces']} faces, {render['image_size']} px)",
         f"{render['views_per_s']:.1f}", "1.00×"),
        (f"prep meshes views/s ({prep['workers']} workers, parse+render+JPEG+write)", f"{prep['views_per_s']:.1f}",
         f"{prep['views_per_s'] / render['views_per_s']:.2f}× render"),
        (f"ingest MVCNN renders views/s ({r['ingest']['workers']} workers)", f"{r['ingest']['views_per_s']:.1f}",
         f"{r['ingest']['views_per_s'] / render['views_per_s']:.2f}× render"),
        (f"ModelNet40 projection ({projection['meshes']} meshes × 12 views), min",
         f"{projection['seconds'] / 60:.1f}",
         f"{projection['seconds'] / projection['target_s']:.2f}× the {projection['target_s'] // 60}-min target"),
    ]
    if "synthetic" in r:
        s = r["synthetic"]
        rows.append((f"prep synthetic defaults ({s['classes'] * s['per_class']} objects, {s['image_size']} px), s",
                     f"{s['seconds']:.1f}", f"{s['views_per_s']:.0f} views/s"))
    return rows


def _save_path(save: Optional[Path], default: str) -> Path:
    """Where the JSON goes, checked before the benchmark runs rather than after it."""
    return check_output_file(save or Path(default), "--save")


def _check_folder(data: Path) -> str:
    if not data.is_dir():
        raise UserError(f"{data}: not a folder")
    return str(data)


def _run_loader(data: Path, batch_size: int, threads: int, **kw) -> dict:
    from mmtm.bench.loader import bench_loader
    return bench_loader(_check_folder(data), batch_size=batch_size, threads=threads, **kw)


def _run_train(data: Path, batch_sizes: Optional[list[int]], threads: int, preset: str, device: str, **kw) -> dict:
    from mmtm.bench.train import bench_train
    from mmtm.training.presets import chosen
    return bench_train(_check_folder(data), batch_sizes=batch_sizes, threads=threads, preset=chosen(preset, device),
                       device=device, **kw)


@app.callback(invoke_without_command=True)
@user_errors
def bench(
    ctx: typer.Context,
    data: Optional[Path] = typer.Option(None, "--data", help="Prepared dataset folder (from `mmtm prep`)."),
    batch_size: int = typer.Option(32, help="Batch size."),
    threads: int = typer.Option(2, "--loader-threads", help="Loader threads."),
    device: str = typer.Option("auto", help="auto | cpu | cuda (training bench)."),
    preset: str = PRESET,
    steps: int = typer.Option(20, help="Timed training steps per repeat."),
    as_json: bool = JSON_OUT,
    save: Optional[Path] = SAVE,
) -> None:
    """Run the loader and the training benches and print their tables; write bench.json."""
    if ctx.invoked_subcommand is not None:
        return
    if data is None:
        raise UserError("--data is required (a folder made by `mmtm prep`)")
    path = _save_path(save, "bench.json")
    result = {"loader": _run_loader(data, batch_size, threads),
              "train": _run_train(data, [batch_size], threads, device=device, preset=preset, steps=steps),
              "machine": _machine()}
    _emit(result, path, as_json,
          _table("mmtm bench", _loader_rows(result["loader"]) + _train_rows(result["train"])))


@app.command("loader")
@user_errors
def loader(data: Path = DATA, batch_size: int = typer.Option(32, help="Batch size."),
           threads: int = typer.Option(2, "--loader-threads",
                                       help="Loader threads (DALI threads / DataLoader workers)."),
           split: str = typer.Option("train", help="Split to read."),
           views: Optional[str] = typer.Option(None, show_default="the data's default_views: 0,6 for 12 views, 0,1 "
                                                                  "for two", help="Two view indices, like 0,6."),
           repeats: int = typer.Option(3, help="Timed repeats; the median is reported."),
           warmup_batches: int = typer.Option(2, help="Untimed batches before each repeat."),
           max_batches: Optional[int] = typer.Option(None, show_default="an epoch, and at least 1 s",
                                                     help="Timed batches per repeat."),
           device: str = typer.Option("auto", help="auto | cpu | cuda."),
           source_workers: Optional[int] = typer.Option(None, "--loader-workers",
                                                        show_default="0 on the CPU, a quarter of the cores (≤ 4) "
                                                                     "with a GPU",
                                                        help="DALI: processes reading the files."),
           as_json: bool = JSON_OUT, save: Optional[Path] = SAVE) -> None:
    """Images/s of each loader backend (dali, torch, in-memory ceiling) with warm-up and median of repeats.

    \b
    Example:
      mmtm bench loader --data demo/data --loader-threads 2 --json
    """
    path = _save_path(save, "bench-loader.json")
    r = _run_loader(data, batch_size, threads, split=split, views=view_pair(views), repeats=repeats,
                    warmup_batches=warmup_batches, max_batches=max_batches, device=device,
                    source_workers=source_workers)
    r["machine"] = _machine()
    _emit(r, path, as_json, _table("loader throughput", _loader_rows(r)))


@app.command("train")
@user_errors
def train(data: Path = DATA,
          batch_size: Optional[str] = typer.Option(None, show_default=shown("batch_size"),
                                                   help="Batch sizes, comma-separated."),
          threads: int = typer.Option(2, "--loader-threads", help="Loader threads."),
          device: str = typer.Option("auto", help="auto | cpu | cuda."),
          preset: str = PRESET,
          loader: str = typer.Option("auto", help="auto | dali | torch."),
          channels_last: str = typer.Option("auto", help="auto (on CUDA) | on | off."),
          steps: int = typer.Option(20, help="Timed steps per repeat."),
          as_json: bool = JSON_OUT, save: Optional[Path] = SAVE) -> None:
    """Samples/s end to end vs. compute only, the share of step time spent waiting for data; on CUDA eager and
    CUDA-graph steps side by side, with the GPU's busy time per step.

    \b
    Examples:
      mmtm bench train --data demo/data --json
      mmtm bench train --data mn40 --device cuda --preset paper --batch-size 8,64
    """
    path = _save_path(save, "bench-train.json")
    sizes = None if batch_size is None else int_list(batch_size, "--batch-size", least=2)
    r = _run_train(data, sizes, threads, device=device, preset=preset, loader=loader,
                   channels_last=channels_last, steps=steps)
    r["machine"] = _machine()
    _emit(r, path, as_json, _table("training throughput", _train_rows(r)))


@app.command("pack")
@user_errors
def pack(data: Path = DATA,
         k: str = typer.Option("1,2,4,8", help="Numbers of runs packed on the device at once, comma-separated."),
         preset: str = PRESET,
         batch_size: int = typer.Option(8, help="Batch size of every run."),
         device: str = typer.Option("auto", help="auto | cpu | cuda."),
         steps: int = typer.Option(20, help="Timed steps per repeat of each run."),
         as_json: bool = JSON_OUT, save: Optional[Path] = SAVE) -> None:
    """Aggregate training samples/s of K runs at once on one device, for each K, against one run alone.

    \b
    Example:
      mmtm bench pack --data data224 --device cuda --k 1,2,4,8
    """
    from mmtm.bench.pack import bench_pack
    from mmtm.training.presets import chosen

    path = _save_path(save, "bench-pack.json")
    r = bench_pack(_check_folder(data), ks=int_list(k, "--k", least=1), preset=chosen(preset, device),
                   batch_size=batch_size, device=device, steps=steps)
    r["machine"] = _machine()
    _emit(r, path, as_json, _table("packing runs on one device", [
        (f"K = {e['k']} runs at once, aggregate samples/s ({e['threads_per_run']} CPU threads each)",
         f"{e['aggregate_samples_per_s']:.1f}", f"{e['aggregate_over_first']:.2f}× K = {r['results'][0]['k']}")
        for e in r["results"]]))


def _machine() -> dict:
    """The facts `mmtm info` shows, carried in every bench JSON."""
    from mmtm.training.environment import facts
    return facts()


@app.command("render")
@user_errors
def render(workers: int = typer.Option(2, help="Processes of the prep and ingest stages."),
           meshes: int = typer.Option(96, help="Mesh (and render-tree object) copies the prep and ingest stages make."),
           repeats: int = typer.Option(10, help="Timed renders of the single-process stage; the median is reported."),
           skip_synthetic: bool = typer.Option(False, "--skip-synthetic", help="Leave out `prep synthetic`."),
           as_json: bool = JSON_OUT, save: Optional[Path] = SAVE) -> None:
    """Views/s of the MVCNN renderer, of mesh prep and of render-tree ingest; ModelNet40 projection.

    Needs no data: it renders a ~5k-face mesh at 224 px.

    \b
    Example:
      mmtm bench render --workers 2 --json
    """
    from mmtm.bench.render import bench_render

    path = _save_path(save, "bench-render.json")
    r = bench_render(workers=workers, meshes=meshes, repeats=repeats, synthetic_set=not skip_synthetic)
    r["machine"] = _machine()
    _emit(r, path, as_json, _table("rendering throughput", _render_rows(r)))
