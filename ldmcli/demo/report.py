"""runs/demo/report.html: one page a person reads after the demo: figures, images, loss curves and the
command of every stage. Every path in it is relative, so the folder can be copied or served as is."""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
from PIL import Image

from ldmcli.metrics.prompts import CATEGORIES
from ldmcli.train.progress import read_metrics


def loss_plot(rows: list[dict], keys: list[str], title: str, out: Path) -> Path | None:
    """A PNG of the logged losses against the step (log scale where every value is positive)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {k: [(r["step"], r[k]) for r in rows if isinstance(r.get(k), (int, float))] for k in keys}
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    for key, points in series.items():
        ax.plot(*zip(*points), label=key)
    if all(v > 0 for points in series.values() for _, v in points):
        ax.set_yscale("log")
    ax.set(xlabel="step", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def recon_strip(recon_dir: Path, out: Path, count: int = 8) -> Path | None:
    """Originals over their reconstructions, side by side, at 2x."""
    origs = sorted(recon_dir.glob("*.orig.png"))[:count]
    if not origs:
        return None
    pairs = [(np.asarray(Image.open(p).convert("RGB")), np.asarray(Image.open(str(p).replace(".orig.png", ".recon.png")).convert("RGB")))
             for p in origs]
    strip = np.concatenate([np.concatenate(pair, axis=0) for pair in pairs], axis=1)
    image = Image.fromarray(strip)
    image = image.resize((image.width * 2, image.height * 2), Image.Resampling.NEAREST)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)
    return out


def _last(folder: Path) -> Path | None:
    files = sorted(folder.glob("step_*.png"))
    return files[-1] if files else None


def _headline(out: Path) -> str:
    path = out / "adherence.json"
    if not path.is_file():
        return ""
    a = json.loads(path.read_text())
    c = a["categories"]
    return (f"<p><b>Prompt adherence: single object {_pct(c['single_object']['all'])}, colour {_pct(c['colour']['all'])}, "
            f"overall {_pct(a['overall'])}</b> (held-out colour-shape pairs: colour {_pct(c['colour']['held_out'])}).</p>")


def _sample_rows(out: Path) -> str:
    """Each grid prompt next to its images (ldm sample numbers them prompt by prompt)."""
    prompts_path, samples = out / "prompts.txt", sorted((out / "samples").glob("[0-9]*.png"))
    prompts = [p for p in prompts_path.read_text().splitlines() if p.strip()] if prompts_path.is_file() else []
    if not prompts or not samples or len(samples) % len(prompts):
        return ""
    n = len(samples) // len(prompts)
    rows = []
    for k, prompt in enumerate(prompts):
        cells = "".join(f'<img class="sample" src="{html.escape(p.relative_to(out).as_posix())}" alt="{html.escape(prompt)}">'
                        for p in samples[k * n:(k + 1) * n])
        rows.append(f"<tr><td>{html.escape(prompt)}</td><td>{cells}</td></tr>")
    return ("<h2>Samples</h2><p>The fixed prompts of the demo; the purple triangles and yellow squares were never in the "
            f"training data.</p><table class=\"samples\">{''.join(rows)}</table>")


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _img(out: Path, path: Path | None, caption: str) -> str:
    if path is None or not path.is_file():
        return ""
    rel = html.escape(path.relative_to(out).as_posix())
    return f'<figure><img src="{rel}" alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}</figcaption></figure>'


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}
td:first-child,th:first-child{text-align:left}figure{display:inline-block;margin:0.5em;vertical-align:top}
img{image-rendering:pixelated;max-width:100%}img.sample{width:96px;margin:2px}pre{background:#f4f4f4;padding:0.6em;overflow-x:auto}"""


def write_report(out: Path, records: list[dict], total_s: float) -> Path:
    """Collect what the stages left in `out` into out/report.html (plots under out/report/)."""
    plots = out / "report"
    ae_plot = loss_plot(read_metrics(out / "ae" / "metrics.jsonl"), ["rec_loss", "loss_discriminator"], "autoencoder", plots / "ae_loss.png")
    ldm_plot = loss_plot(read_metrics(out / "ldm" / "metrics.jsonl"), ["loss"], "latent diffusion", plots / "ldm_loss.png")
    strip = recon_strip(out / "ae" / "recon", plots / "recon_pairs.png")
    parts = [f"<h1>ldmcli demo</h1><p>Text-to-image latent diffusion trained from scratch on the built-in shapes, "
             f"end to end in {total_s / 60:.1f} minutes of stage time.</p>", _headline(out)]

    recon_path = out / "ae" / "recon.json"
    if recon_path.is_file():
        r = json.loads(recon_path.read_text())
        rows = [[k, f"{r[k]:.4g}" if r.get(k) is not None else "n/a", f"{r[f'bicubic_{k}']:.4g}" if r.get(f"bicubic_{k}") is not None else "n/a"]
                for k in ("psnr", "ssim", "hf_ratio")]
        parts.append(f"<h2>Autoencoder</h2><p>Reconstruction of {r['images']} held-out scenes, next to bicubic resampling "
                     f"through the same latent size (f={r['factor']}).</p>" + _table(["metric", "autoencoder", "bicubic"], rows))
    parts.append(_img(out, strip, "held-out originals (top) and their reconstructions (bottom)"))
    parts.append(_img(out, _last(out / "ae" / "samples"), "training preview: inputs and reconstructions"))

    adherence_path = out / "adherence.json"
    if adherence_path.is_file():
        a = json.loads(adherence_path.read_text())
        rows = [[c, _pct(a["categories"][c]["all"]), _pct(a["categories"][c]["seen"]), _pct(a["categories"][c]["held_out"]),
                 _pct(a["rendered"]["categories"][c]["all"])] for c in CATEGORIES]
        rows.append(["overall", _pct(a["overall"]), "", "", _pct(a["rendered"]["overall"])])
        parts.append(f"<h2>Prompt adherence</h2><p>{a['images']} images ({a['per_category']} prompts per category x {a['n']}), "
                     f"{html.escape(a['sampler'])} {a['steps']} steps, guidance {a['guidance']}. Held-out prompts name a colour-shape "
                     f"pair never drawn in training ({html.escape(', '.join(a['hold_out']) or 'none')}). "
                     "Rendered: the same judge on the prompts' own scenes.</p>"
                     + _table(["category", "all", "seen", "held-out", "rendered"], rows))
    parts.append(_sample_rows(out))
    parts.append(_img(out, out / "adherence" / "grid.png", "the judged adherence images"))
    parts.append(_img(out, _last(out / "ldm" / "samples"), "training preview of the latent diffusion model"))

    parts.append("<h2>Training</h2>")
    parts.append(_img(out, ae_plot, "autoencoder losses"))
    parts.append(_img(out, ldm_plot, "latent diffusion loss"))
    parts.append(_img(out, out / "data" / "shapes" / "contact_sheet.png", "training data"))

    rows = [[r["name"], r["status"], f"{r['seconds']:.0f} s" if r.get("seconds") is not None else ""] for r in records]
    commands = "\n".join(r["command"] for r in records)
    parts.append("<h2>Stages</h2>" + _table(["stage", "status", "time"], rows)
                 + f"<p>Each stage is one command; rerun any of them:</p><pre>{html.escape(commands)}</pre>")
    page = (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>ldmcli demo</title>"
            f"<style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>\n")
    path = out / "report.html"
    path.write_text(page)
    return path
