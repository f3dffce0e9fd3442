"""Compare lightweight networks on the machine at hand: size, multiply-adds, published accuracy, and speed measured
here (batch-1 latency, inference and training throughput, peak memory), like the GhostNet paper's first figure.

    python evaluation/compare.py                                  # the default set, on the GPU if there is one
    python evaluation/compare.py --device cpu --threads 2 --output-dir runs/compare
    python evaluation/compare.py --models ghostnet ghostnet:0.5 mobilenet_v3_large resnet50 --input-size 160
    python evaluation/compare.py --device cuda --compile --batch-size 128
    python evaluation/compare.py --quick                          # two models at 32 px, in seconds
    python evaluation/compare.py --models ghostnet resnet50 --int8 --device cpu   # + ONNX Runtime fp32 vs int8

``--models`` takes any ``-a`` name of the training scripts; ``ghostnet:W`` is GhostNet at width W (``ghostnetv2:W``,
``ghostnetv3:W`` likewise); GhostNetV3 is measured re-parameterised, as deployed (its training throughput in its
training form). Each speed figure
is measured twice: with the project's speed defaults for the device (as test.py and train_main.py run: autocast
where it pays, channels_last, BatchNorm folded for inference; changed by --amp/--no-amp, --channels-last,
--compile) and as plain fp32 NCHW eager PyTorch. Writes compare.csv, compare.md (a Markdown table) and compare.png
(top-1 against MACs and against latency) to --output-dir, each naming the machine (CPU model, cores, AMX/AVX-512
flags, GPU: common.report.machine). A model that cannot run keeps a row with the reason.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the project root holds common/

from common.errors import UserError, exit_on_user_error, quiet_ctrl_c, sigterm_raises

quiet_ctrl_c(__name__)  # as a program: a Ctrl+C while torch loads prints one line, not a traceback

import argparse  # noqa: E402
import copy  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from common import files, limits, terminal  # noqa: E402
from common.cli import options  # noqa: E402
from common.models import factory, onnx_model  # noqa: E402
from common.predict import inference  # noqa: E402
from common.report import figures, steadiness  # noqa: E402
from common.report.machine import CSV_FIELDS, Machine, this_machine  # noqa: E402
from common.report.steadiness import LoadMeter  # noqa: E402
from evaluation import chart, measure, published  # noqa: E402
from evaluation import int8 as int8_columns  # noqa: E402

DEFAULT_MODELS = ("ghostnet:0.5", "ghostnet", "ghostnet:1.3", "ghostnetv2", "ghostnetv3", "mobilenet_v2",
                  "mobilenet_v3_small",
                  "mobilenet_v3_large", "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5",
                  "shufflenet_v2_x2_0", "mnasnet0_5", "mnasnet0_75", "mnasnet1_0", "mnasnet1_3", "efficientnet_b0",
                  "regnet_x_400mf", "regnet_y_400mf", "squeezenet1_1", "resnet18", "resnet50")
QUICK_MODELS = ("ghostnet", "resnet18")
QUICK = {"input_size": 32, "batch_size": 4, "repeats": 3}
BATCH = {"cpu": 64, "cuda": 256}
REPEATS = {"cpu": 25, "cuda": 250}
RUNS_PER_BATCH = 25  # each throughput times repeats / 25 batches: one on the CPU by default, ten on a GPU
NAMES = ("compare.csv", "compare.md", "compare.png")
SETUPS = ("defaults", "fp32")
FIGURES = ("latency_ms", "latency_p90_ms", "infer_img_s", "train_img_s", "peak_mib")
COLUMNS = (["model", "arch", "width", "params", "macs", "input_size", "published_top1", "published_top5",
            "published_source", "eval_resize", "eval_crop", "eval_interpolation"]
           + [f"{s}_{f}" for s in SETUPS for f in FIGURES]
           + [f"{s}_latency_spread_pct" for s in SETUPS] + ["repeats", "other_cores", "reliable"]
           + ["defaults_inference", "defaults_training", "device", "batch_size", "error", *CSV_FIELDS])
COLUMNS = COLUMNS + int8_columns.COLUMNS  # empty without --int8


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Parameters, multiply-adds, published top-1/top-5 and measured speed of several networks.",
        parents=[options.speed_parser(pipeline=False)])
    parser.add_argument("--models", nargs="+", default=None, metavar="ARCH",
                        help="-a names to compare; ghostnet:W for GhostNet at width W, ghostnetv2:W and "
                             f"ghostnetv3:W likewise (default: {len(DEFAULT_MODELS) - 2} lightweight networks, "
                             "listed in docs/comparing.md, and resnet18/resnet50 as references)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if present, else cpu)")
    parser.add_argument("--input-size", type=options.PIXELS, default=None, metavar="PX",
                        help="square input size for MACs and every speed figure (default: 224)")
    parser.add_argument("-b", "--batch-size", type=options.POSITIVE_INT, default=None, metavar="N",
                        help=f"batch of the inference and training throughputs (default: {BATCH['cpu']} on the CPU, "
                             f"{BATCH['cuda']} on a GPU)")
    parser.add_argument("--threads", type=limits.Number(int, 1, 1024), default=None, metavar="N",
                        help="CPU threads for torch (default: torch's own choice, the cores)")
    parser.add_argument("--repeats", type=limits.Number(int, 1, 100000), default=None, metavar="N",
                        help=f"timed batch-1 runs for the latency; each throughput times N/{RUNS_PER_BATCH} batches, "
                             f"at least one (default: {REPEATS['cpu']} on the CPU, {REPEATS['cuda']} on a GPU)")
    parser.add_argument("--quick", action="store_true",
                        help=f"{' and '.join(QUICK_MODELS)} at {QUICK['input_size']} px, batch {QUICK['batch_size']}, "
                             f"{QUICK['repeats']} runs: a check that everything works (each flag still overrides)")
    parser.add_argument("--int8", action="store_true",
                        help="also export each model to ONNX and quantise it to int8 (as export.py --int8), and time "
                             "both with onnxruntime on the CPU: latency, throughput and file size columns")
    parser.add_argument("--output-dir", default=os.path.join("runs", "compare"), metavar="DIR",
                        help="where compare.csv, compare.md and compare.png go (default: runs/compare)")
    return parser


def parse_model(spec: str, archs: list[str]) -> tuple[str, float]:
    """``arch`` or ``ghostnet:W`` (any GhostNet) as (arch, width); unknown names are refused with a suggestion."""
    arch, _, width = spec.partition(":")
    factory.check_arch(arch, archs)
    if not width:
        return arch, 1.0
    if arch not in factory.GHOSTNETS:
        raise UserError(f"--models {spec}: only the GhostNets take a width (ghostnet:0.5); drop ':{width}'.")
    try:
        value = limits.Number(float, 0, limits.MAX_WIDTH_MULT, low_open=True)(width)
    except argparse.ArgumentTypeError as exc:
        raise UserError(f"--models {spec}: the width {exc}.") from None
    return arch, value


def choose_device(name: str | None) -> torch.device:
    """The device named by ``--device`` (default: the first GPU, else the CPU), refused when absent."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device name; use cpu, cuda or cuda:N.") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {name!r}: only cpu and cuda are measured here; use one of them.")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA GPU is available here; use --device cpu.")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UserError(f"--device {name}: there are {torch.cuda.device_count()} GPU(s); use a lower index.")
    return device


def fill_defaults(args: argparse.Namespace) -> None:
    """Fill the defaults that depend on --quick and the device; refuse a bad device or model name on the way."""
    args.device = choose_device(args.device)
    if args.quick:
        args.models = args.models or list(QUICK_MODELS)
        for key, value in QUICK.items():
            setattr(args, key, getattr(args, key) or value)
    archs = factory.available_archs()
    args.specs = [parse_model(spec, archs) for spec in (args.models or DEFAULT_MODELS)]
    args.input_size = args.input_size or limits.VAL_CROP_SIZE
    args.batch_size = args.batch_size or BATCH[args.device.type]
    args.repeats = args.repeats or REPEATS[args.device.type]


def check_args(args: argparse.Namespace) -> None:
    """Refuse flags that do not go together, and an unusable output folder, before any work; changes nothing."""
    if args.amp and args.device.type == "cpu" and args.amp_dtype == "fp16":
        raise UserError("--amp-dtype fp16 needs a CUDA GPU; use --amp-dtype bf16 on the CPU.")
    files.make_output_dir(args.output_dir)
    if args.int8:
        for module in ("onnx", "onnxscript", "onnxruntime"):
            onnx_model.require(module, "compare.py --int8")


def label(arch: str, width: float) -> str:
    return arch if arch not in factory.GHOSTNETS or width == 1.0 else f"{arch}:{width:g}"


def _reason(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:160] if lines else ''}".rstrip(": ")


def measure_setups(model: torch.nn.Module, device: torch.device, setups: list[measure.Setup],
                   budget: measure.Budget) -> tuple[dict, list[str]]:
    """The speed columns of each setup, and the reasons of those that could not run (their cells stay empty)."""
    row, errors = {}, []
    for setup in setups:
        try:
            got = measure.measure(model, device, setup, budget)
        except Exception as exc:  # noqa: BLE001 - out of memory, an op without a kernel, a compiler failure: next
            errors.append(f"{setup.name}: {_reason(exc)}")
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        values = (got.latency_median_ms, got.latency_p90_ms, got.infer_img_s, got.train_img_s, got.peak_mib)
        row.update({f"{setup.name}_{f}": round(v, 3) for f, v in zip(FIGURES, values)})
        if got.latency_spread_pct is not None:
            row[f"{setup.name}_latency_spread_pct"] = round(got.latency_spread_pct, 1)
        if setup.name == "defaults":
            row.update(defaults_inference=got.inference, defaults_training=got.training)
    return row, errors


def count_macs(model: torch.nn.Module, input_size: int) -> int:
    """``factory.count_macs`` on a meta-device copy (shapes only, no arithmetic), or on the model itself for one whose
    forward needs real values (a data-dependent branch)."""
    try:
        return factory.count_macs(copy.deepcopy(model).to("meta"), input_size)
    except (NotImplementedError, RuntimeError) as exc:
        if "meta" not in str(exc):  # a real failure, such as an input too small: the same on the CPU
            raise
        return factory.count_macs(model, input_size)


def model_row(arch: str, width: float, args: argparse.Namespace, setups: list[measure.Setup],
              budget: measure.Budget) -> dict:
    """Every column of one model; what could not be built or run is named in ``error``."""
    pub = published.published(arch, width)
    row = {"model": label(arch, width), "arch": arch, "width": width if arch in factory.GHOSTNETS else "",
           "input_size": budget.input_size, "published_top1": pub.top1, "published_top5": pub.top5,
           "published_source": pub.source, "eval_resize": pub.resize, "eval_crop": pub.crop,
           "eval_interpolation": pub.interpolation, "device": str(args.device), "batch_size": budget.batch_size,
           "repeats": budget.repeats}
    try:
        model = factory.create_model(arch, factory.IMAGENET_CLASSES, width_mult=width).eval()
    except Exception as exc:  # noqa: BLE001 - a model that cannot be built keeps its row
        return {**row, "error": f"build: {_reason(exc)}"}
    deployed = factory.reparameterized(model) or model  # GhostNetV3 as deployed: its branches folded
    row["params"] = factory.count_params(deployed)
    try:
        row["macs"] = count_macs(deployed, budget.input_size)
    except Exception as exc:  # noqa: BLE001 - e.g. an input too small for the model's pooling
        return {**row, "error": f"forward at {budget.input_size} px: {_reason(exc)}"}
    speed, errors = measure_setups(model, args.device, setups, budget)
    if args.int8:  # ONNX Runtime on the CPU, fp32 and int8 one after the other
        speed.update(int8_columns.columns(model, arch, budget.input_size, budget.batch_size, budget.repeats,
                                          args.threads))
    return {**row, **speed, "error": "; ".join(errors)}


def cell(value) -> str:
    if value is None or value == "":
        return ""
    return f"{value:g}" if isinstance(value, float) else str(value)


def rounded(value) -> str:
    """A measured figure for people: three significant digits or so (152, 85.6, 9.03), empty when missing."""
    if value is None or value == "":
        return ""
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def markdown(rows: list[dict], caption: str) -> str:
    """The rows as a Markdown table with the figures people compare; the CSV has every column."""
    head = ["model", "params (M)", "MACs (M)", "top-1", "top-5", "published by", "eval resize/crop",
            "latency ms (defaults / fp32)", "p90 ms (defaults / fp32)", "inference img/s (defaults / fp32)",
            "training img/s (defaults / fp32)", "peak MiB (defaults / fp32)", "defaults"]
    lines = [caption, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        pair = [" / ".join(rounded(r.get(f"{s}_{f}")) for s in SETUPS) for f in FIGURES]
        pair = [p if p.strip(" /") else "" for p in pair]
        size = f"{r['eval_resize']}/{r['eval_crop']} {r['eval_interpolation']}" if r.get("eval_crop") else ""
        params = f"{r['params'] / 1e6:.2f}" if r.get("params") else ""
        macs = f"{r['macs'] / 1e6:.1f}" if r.get("macs") else ""
        defaults = r.get("defaults_inference", "") + (f"; failed: {r['error']}" if r.get("error") else "")
        cells = [r["model"], params, macs, cell(r["published_top1"]), cell(r["published_top5"]),
                 r["published_source"], size, *pair, defaults]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_tables(rows: list[dict], out: str, caption: str, steady: str = "") -> None:
    """compare.csv and compare.md, each replaced whole (after every model, so that a stopped run keeps its rows);
    ``steady``, the steadiness line, follows compare.md's table."""
    table = files.csv_bytes(COLUMNS, ([cell(r.get(c)) for c in COLUMNS] for r in rows))
    files.write_atomically(os.path.join(out, NAMES[0]), lambda f: f.write(table))
    int8 = any("onnx_fp32_mib" in r or r.get("int8_error") for r in rows)
    text = (markdown(rows, caption) + (f"\n{steady}\n" if steady else "")
            + (int8_columns.markdown(rows, rounded) if int8 else "")).encode()
    files.write_atomically(os.path.join(out, NAMES[1]), lambda f: f.write(text))


def result_line(row: dict) -> str:
    """One line per model while the run goes: its batch-1 latencies, or why it could not run."""
    times = [f"{rounded(row.get(f'{s}_latency_ms'))} ms {s}" for s in SETUPS if row.get(f"{s}_latency_ms") is not None]
    failed = f"failed: {row['error']}" if row.get("error") else ""
    return f"{row['model']}: " + "; ".join([", ".join(times)] * bool(times) + [failed] * bool(failed))


def budget_of(args: argparse.Namespace) -> measure.Budget:
    return measure.Budget(args.input_size, args.batch_size, args.repeats, max(1, args.repeats // RUNS_PER_BATCH),
                          warmup=max(2, args.repeats // 5))


def speed_flags(args: argparse.Namespace) -> str:
    amp = {None: "AMP where it pays", True: f"AMP {args.amp_dtype}", False: "no AMP"}[args.amp]
    return ", ".join([amp, "channels_last" if args.channels_last else "NCHW", "BatchNorm folded for inference"]
                     + ["torch.compile"] * args.compile)


def describe(args: argparse.Namespace, budget: measure.Budget) -> str:
    threads = f" ({torch.get_num_threads()} thread(s))" if args.device.type == "cpu" else ""
    return (f"{len(args.specs)} models on {args.device}{threads}, torch {torch.__version__}: {budget.input_size} px, "
            f"latency over {budget.repeats} batch-1 runs, throughputs over {budget.steps} batch(es) of "
            f"{budget.batch_size}; defaults = the project's speed flags ({speed_flags(args)}), fp32 = plain fp32 "
            "NCHW eager")


def steadiness_line(rows: list[dict], load: steadiness.Load) -> str:
    """One line for compare.md and the end of the run: the models whose timing failed the steadiness check, or the
    worst spread, and the whole run's load."""
    failed = [r["model"] for r in rows if r.get("reliable") == "no"]
    worst = steadiness.worst(s for r in rows for s in steadiness.row_spreads(r))
    spread = f"latency repeats spread at most {worst:.1f}%" if worst is not None else "no repeats to compare"
    verdict = (f"unreliable timing (see `reliable` in compare.csv): {', '.join(failed)}" if failed
               else f"every row passed the steadiness check ({spread})")
    return f"Steadiness: {verdict}; over the whole run {load.describe()}."


def run(args: argparse.Namespace, machine: Machine, meter: LoadMeter) -> list[dict]:
    budget = budget_of(args)
    speed = inference.SpeedConfig(amp=args.amp, amp_dtype=args.amp_dtype, channels_last=args.channels_last,
                                  compile=args.compile)
    setups = [measure.Setup("defaults", speed), measure.FP32]
    # compare.md keeps its layout (caption line, blank line, table): the machine leads the caption line.
    caption = f"Measured by `evaluation/compare.py` on {machine.describe()}. {describe(args, budget)}."
    print(f"=> machine: {machine.describe()}\n=> {describe(args, budget)}", flush=True)
    rows: list[dict] = []
    with terminal.Ticker(len(args.specs), "compare", unit="models") as ticker:
        for arch, width in args.specs:
            ticker.describe(label(arch, width))
            with LoadMeter() as model_meter:
                row = model_row(arch, width, args, setups, budget)
            judged, warning = steadiness.judge_row(row, model_meter.load, f"{row['model']}'s timing")
            rows.append({**row, **judged, **machine.csv_fields()})
            ticker.write(result_line(rows[-1]))
            if warning:
                ticker.write(warning)
            write_tables(rows, args.output_dir, caption, steadiness_line(rows, meter.load))
            ticker.update(1)
    return rows


def main(args: argparse.Namespace) -> list[dict]:
    """Measure every model, write the three files, and return the rows (for callers such as tests)."""
    with exit_on_user_error(), sigterm_raises():  # a SIGTERM leaves the earlier files whole, no temporary one
        start = time.perf_counter()
        fill_defaults(args)
        check_args(args)
        machine = this_machine([args.device])
        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(args.threads or threads)
            with LoadMeter() as meter:
                rows = run(args, machine, meter)
        finally:
            torch.set_num_threads(threads)  # a caller in the same process keeps its own setting
        print(f"=> {steadiness_line(rows, meter.load)}", flush=True)
        written = list(NAMES)
        try:
            figure = chart.compare_figure(rows, str(args.device), f"Measured on {machine.describe()}")
            figures.save_png(figure, os.path.join(args.output_dir, NAMES[2]))
        except figures.MatplotlibMissing:
            print(f"=> {NAMES[2]} not drawn: matplotlib is not installed ({figures.INSTALL_HINT})", flush=True)
            written.remove(NAMES[2])
        print(f"=> wrote {', '.join(written)} to {args.output_dir} in {time.perf_counter() - start:.0f} s",
              flush=True)
        return rows


if __name__ == "__main__":
    main(get_args_parser().parse_args())
