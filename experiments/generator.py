"""``experiment=generator`` (issue 31, part 2): a learned first guess of the cloak, trained and compared.

Training: a :class:`~cloak.cloaking.generator.FrameGenerator` sees each training face in the
aligned frame; its output is warped into the photo and becomes the attack's variable ``u`` there
(through the photo's own cloak shape: blur, chroma, masks), and the generator minimises the
attack's own loss (the default ensemble and LowKey's views, one random platform distortion per
face per step, :attr:`~cloak.attacks.Attack.transform`) plus the attack's face-budget penalty.
Checkpoints every ``checkpoint_minutes``; the loss per epoch is logged.

Evaluation, on one photo of each of ``eval_faces`` held-out identities: the attack from its own
start (``steps`` and 15 steps), and from the generator's start with ``warm_steps`` of 0, 15, ...;
per arm the mean per-model ``margin_jpeg75`` (:func:`cloak.measurement.measure`), the share of
faces past every threshold, the face quality and seconds per face. Writes ``generator.json`` and
``generator.md``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from cloak.attacks import Attack
from cloak.attacks.base import Views
from cloak.attacks.steps import frozen
from cloak.builders import build_from_config
from cloak.cloaking.generator import FrameGenerator, generator_start, load_generator, to_photo
from cloak.cloaking.reuse import IdentityMemory, descriptors
from cloak.measurement import measure
from cloak.models.ensemble import as_ensemble
from cloak.photos.pixels import to_uint8
from experiments.generator_faces import Case, collect, job, prepare, references, split_identities

log = logging.getLogger(__name__)


def batch_loss(attack: Attack, views: Views, generator: FrameGenerator, cases: list[Case], step_gen) -> tuple:
    """The attack's weighted loss (mean over faces) and its budget penalty for the generator's cloaks."""
    active = attack.active_views(views, step_gen)
    total = sum(w for _, w in views.values())
    frame_u = generator(torch.stack([c.frame for c in cases]))
    advs = []
    for c, u in zip(cases, frame_u):
        start = to_photo(u[None], c.job.landmarks, tuple(c.job.photo.shape[-2:]))[0]
        adv = (c.clean + c.shape.delta(c.region.crop(start).unsqueeze(0))).clamp(0, 1)
        # The shading penalty's CIEDE2000 has a NaN gradient at pixels of no chroma (grey or
        # clipped): those pixels pass no gradient, the rest of the face does.
        adv.register_hook(_finite)
        advs.append(adv)
    refs = {name: torch.cat([references(attack, views, c)[name] for c in cases]) for name in active}
    draws = [attack._draw(c.generator) for c in cases]
    per_view = attack._view_losses(active, advs, [c.region for c in cases], draws, refs)
    loss = attack._weigh(active, per_view, total=total).mean()
    penalty = sum(c.budget.penalty(a, c.clean) for c, a in zip(cases, advs)) / len(cases)
    return loss, penalty


def _finite(grad: torch.Tensor) -> torch.Tensor:
    return torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)


def save_checkpoint(generator: FrameGenerator, path: Path, meta: dict) -> None:
    """Writes the generator's weights (float32) with what :func:`load_generator` needs and ``meta``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().clone() for k, v in generator.state_dict().items()}
    torch.save({"state": state, "eps": generator.eps, "width": generator.width, "meta": meta}, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)


def train(cfg: DictConfig, parts, faces: list, checkpoint: Path) -> FrameGenerator:
    """Trains the generator on ``faces`` for ``generator.minutes`` of wall time; returns it."""
    g = cfg.generator
    attack = parts.attack
    views = attack.views(as_ensemble(parts.model))
    torch.manual_seed(int(cfg.seed))
    generator = FrameGenerator(attack.eps, int(g.width))
    optimiser = torch.optim.Adam(generator.parameters(), lr=float(g.lr))
    cases = [prepare(attack, views, f, int(cfg.seed)) for f in faces]
    order_gen, step_gen = torch.Generator().manual_seed(int(cfg.seed)), torch.Generator().manual_seed(1)
    start, saved, epoch, history = time.monotonic(), time.monotonic(), 0, []
    batch = int(g.batch)
    while time.monotonic() - start < 60 * float(g.minutes):
        order = torch.randperm(len(cases), generator=order_gen).tolist()
        sums = [0.0, 0.0, 0]
        for k in range(0, len(order) - batch + 1, batch):
            loss, penalty = batch_loss(attack, views, generator, [cases[i] for i in order[k : k + batch]], step_gen)
            optimiser.zero_grad()
            (loss + float(g.penalty_weight) * penalty).backward()
            if not finite_step(generator, float(g.clip)):
                log.warning("  epoch %d batch %d: a non-finite loss or gradient, batch skipped", epoch, sums[2])
                continue
            optimiser.step()
            sums = [sums[0] + float(loss), sums[1] + float(penalty), sums[2] + 1]
            if time.monotonic() - saved > 60 * float(g.checkpoint_minutes):
                save_checkpoint(generator, checkpoint, {"epoch": epoch, "batches": sums[2], "history": history})
                saved = time.monotonic()
                log.info("  epoch %d batch %d: loss %.4f penalty %.4f", epoch, sums[2], *_means(sums))
            if time.monotonic() - start > 60 * float(g.minutes):
                break
        history.append({"epoch": epoch, "batches": sums[2], "loss": _means(sums)[0], "penalty": _means(sums)[1]})
        log.info(
            "Epoch %d (%d batches, %.0f s): loss %.4f penalty %.4f",
            epoch,
            sums[2],
            time.monotonic() - start,
            *_means(sums),
        )
        epoch += 1
    meta = {
        "epochs": history,
        "faces": len(cases),
        "minutes": (time.monotonic() - start) / 60,
        "config": OmegaConf.to_container(g),
    }
    save_checkpoint(generator, checkpoint, meta)
    return generator.eval()


def finite_step(generator: FrameGenerator, clip: float) -> bool:
    """Clips the generator's gradient norm to ``clip``; False (nothing to step) when any gradient is not finite."""
    grads = [p.grad for p in generator.parameters() if p.grad is not None]
    if not all(bool(torch.isfinite(q).all()) for q in grads):
        return False
    torch.nn.utils.clip_grad_norm_(generator.parameters(), clip)
    return True


def _means(sums: list) -> tuple[float, float]:
    n = max(1, sums[2])
    return sums[0] / n, sums[1] / n


def cloak_arm(attack: Attack, parts, faces: list, seed: int, first_guess=None) -> list[dict]:
    """The faces cloaked one way, together in one batch (as a run cloaks them); each face's figures.

    ``first_guess``: None for the attack's own start, else a function of a face's name and job
    giving its start (timed with the cloak). ``seconds`` is the batch's time over its faces.
    """
    t0 = time.perf_counter()
    jobs = [job(f, seed) for f in faces]
    if first_guess is not None:
        with torch.no_grad():
            jobs = [job(f, seed, start=first_guess(f.name, j)) for f, j in zip(faces, jobs)]
    results = attack(parts.model, jobs)
    seconds = (time.perf_counter() - t0) / max(1, len(faces))
    rows = []
    for face, result in zip(faces, results):
        report = measure(face.photo, to_uint8(result.photo), [_as_face(face)], parts.model, parts.device, attack)
        f = report.faces[0]
        rows.append(
            {
                "name": face.name,
                "steps": result.steps,
                "seconds": seconds,
                "margin_jpeg75": f.margin_jpeg75,
                "shading": f.shading,
                "ssim": f.ssim,
                "ssim_p5": f.ssim_p5,
            }
        )
    return rows


def group_guess(attack: Attack, parts, sources: list, seed: int):
    """The group start (:mod:`cloak.cloaking.reuse`): each ``source`` (another photo of its person)
    cloaked from the attack's own start with its ``steps``, its cloak warped into a later face's job."""
    memory, keys = IdentityMemory(), {}
    jobs = [job(s, seed) for s in sources]
    ensemble = as_ensemble(parts.model)
    for source, j, result in zip(sources, jobs, attack(parts.model, jobs)):
        face = descriptors(ensemble, j)
        keys[source.name] = memory.add(face)
        memory.keep(keys[source.name], j, result, face)
    return lambda name, j: memory.start(keys[name], j)


def _as_face(face):
    from cloak.detection import Face

    return Face(box=face.box, score=1.0, landmarks=face.landmarks)


def arms(cfg: DictConfig) -> list[tuple[str, int, str]]:
    """The compared ways to cloak: (label, steps, start: ``own``, ``generator`` or ``group``)."""
    g = cfg.generator
    out = [(f"attack's own start, {s} steps", int(s), "own") for s in g.cold_steps]
    out += [(f"generator start, {s} steps", int(s), "generator") for s in g.warm_steps]
    return out + [(f"group start, {s} steps", int(s), "group") for s in g.group_steps]


def evaluate(cfg: DictConfig, parts, faces: list, generator: FrameGenerator, out: Path) -> dict:
    """Every arm on the first face of each held-out person; writes ``generator.json`` and ``generator.md`` after each arm.

    The group start needs the person's second photo (``faces`` holds up to two per person).
    """
    attack, seed, cold = parts.attack, int(cfg.seed), int(cfg.attack.steps)
    people: dict[str, list] = {}
    for f in faces:
        people.setdefault(f.name, []).append(f)
    firsts = [p[0] for p in people.values()]
    group = None
    sources = [p[1] for p in people.values() if len(p) > 1]
    if cfg.generator.group_steps and sources:
        group = group_guess(attack, parts, sources, seed)
    results: dict = {"faces": ["/".join(Path(f.path).parts[-2:]) for f in firsts], "arms": {}}
    for label, steps, start in arms(cfg):
        attack.steps, attack.warm_steps = (cold, steps) if start != "own" else (steps, attack.warm_steps)
        if start == "own":
            rows = cloak_arm(attack, parts, firsts, seed)
        elif start == "generator":
            rows = cloak_arm(
                attack, parts, firsts, seed, lambda _, j: generator_start(generator, j.photo, j.landmarks[0])
            )
        else:
            rows = cloak_arm(attack, parts, [f for f in firsts if len(people[f.name]) > 1], seed, group)
        results["arms"][label] = {"rows": rows, "summary": summarise(rows)}
        log.info("%s: %s", label, results["arms"][label]["summary"])
        attack.steps = cold
        write_results(results, out)
    return results


def summarise(rows: list[dict]) -> dict:
    """Mean per-model margin, share of faces past every threshold, worst face quality, mean steps and seconds."""
    models = sorted(rows[0]["margin_jpeg75"])
    mean = {m: sum(r["margin_jpeg75"][m] for r in rows) / len(rows) for m in models}
    return {
        "faces": len(rows),
        "margin": {m: round(v, 3) for m, v in mean.items()},
        "margin_mean": round(sum(mean.values()) / len(mean), 3),
        "past_every": round(sum(min(r["margin_jpeg75"].values()) > 1 for r in rows) / len(rows), 3),
        "shading_max": round(max(r["shading"] for r in rows), 3),
        "ssim_min": round(min(r["ssim"] for r in rows), 4),
        "ssim_p5_min": round(min(r["ssim_p5"] for r in rows), 4),
        "steps": round(sum(r["steps"] for r in rows) / len(rows), 1),
        "seconds": round(sum(r["seconds"] for r in rows) / len(rows), 1),
    }


def write_results(results: dict, out: Path) -> None:
    """``generator.json`` (every face) and ``generator.md`` (the table)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "generator.json").write_text(json.dumps(results, indent=1))
    summaries = [s["summary"] for s in results["arms"].values()]
    models = sorted(summaries[0]["margin"]) if summaries else []
    head = ["start", "faces", *models, "mean", "past every", "shading max", "SSIM / p5 min", "steps", "s / face"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for label, arm in results["arms"].items():
        s = arm["summary"]
        cells = [label, str(s["faces"]), *(f"{s['margin'][m]:.3f}" for m in models), f"{s['margin_mean']:.3f}"]
        cells += [f"{s['past_every']:.2f}", f"{s['shading_max']:.2f}", f"{s['ssim_min']:.3f} / {s['ssim_p5_min']:.3f}"]
        cells += [f"{s['steps']:.0f}", f"{s['seconds']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    (out / "generator.md").write_text("\n".join(lines) + "\n")


def run_generator(cfg: DictConfig, root: Path, out: Path, resolve) -> dict:
    """Trains (``generator.stage`` train or both) and evaluates (eval or both); see the module's docstring."""
    g = cfg.generator
    if g.get("threads"):
        torch.set_num_threads(int(g.threads))
    parts = build_from_config(cfg)
    train_names, held_out = split_identities(root, float(g.train_share))
    checkpoint = resolve(g.checkpoint)
    if g.stage in ("train", "both"):
        faces = collect(root, train_names, int(g.photos_per_person), parts.detector, resolve(g.cache))
        log.info("Training on %d faces of %d identities", len(faces), len(train_names))
        with frozen(as_ensemble(parts.model)):
            train(cfg, parts, faces, checkpoint)
    if g.stage not in ("eval", "both"):
        return {}
    step = max(1, len(held_out) // int(g.eval_faces))
    picked = held_out[::step][: int(g.eval_faces)]
    faces = collect(root, picked, 2, parts.detector, resolve(g.cache).with_name("held_out.pt"))
    return evaluate(cfg, parts, faces, load_generator(str(checkpoint)), out)
