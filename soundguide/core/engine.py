"""The optimization loop: move a generator's latent towards weighted guidance targets.

::

    targets = {g: g.target() for g in guidances}          # once, before the loop
    w = w0.clone().requires_grad_()
    for step in range(steps):
        image = generator.synthesize(w)
        emb   = {space: encoder.encode_image(image)}      # once per space
        loss  = sum(weight * guidance.loss(emb[space], target))
              + sum(weight * regularizer.loss(w, w0, image, image0))
        Adam step with the scheduled learning rate; emit a StepEvent

Terms with weight 0 are never built nor computed. Per-item losses are summed
over the batch, so with Adam every item follows exactly the path it would
follow alone -- as long as every active term is per-item: all guidances, and
the regularizers whose ``per_item`` is true (``latent_l2``, ``identity``). A
sequence regularizer (``per_item = False``, e.g. ``temporal`` for video
frames) still returns one value per item, but its terms couple items, so
their paths depend on each other. :meth:`Editor.run_items` reuses one
Editor's models for several runs with given start latents and targets. A non-finite loss (or a non-finite latent after the last update)
stops the run and keeps the last latent whose loss was finite. A :class:`Stop`
request (another thread, a signal handler, a subscriber whose write failed)
ends the run between two steps; Ctrl-C (KeyboardInterrupt) abandons the step in
progress; an exception in a step ends the run with status ``failed``. In each
case the result keeps what was done: the latent after the last completed update.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import torch

from soundguide.core.adam import LatentAdam
from soundguide.core.errors import ConfigError, PluginError, exception_line
from soundguide.core.inputs import check_inputs, run_inputs
from soundguide.core.interfaces import (
    Generator,
    Guidance,
    ImageEncoder,
    ModelStore,
    Regularizer,
    RunContext,
)
from soundguide.core.latents import load_latent_file
from soundguide.core.losses import SCHEDULES
from soundguide.core.registry import Registries

Status = Literal["finished", "nonfinite", "interrupted", "failed"]
Phase = Literal["preparing", "running", "finishing"]


class Stop:
    """A request to end a run between two steps; safe to call from any thread or a
    signal handler.

    ``Editor(..., stop=stop)`` checks it before every step; ``stop.request()``
    ends the run after the step in progress, with status ``interrupted``
    (or the ``status`` given) and what was done kept. :attr:`phase` tells where
    the run is: ``preparing`` (loading, before the first step), ``running`` or
    ``finishing`` (the loop has ended; the result is being built and written).
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self.phase: Phase = "preparing"
        self.message: str | None = None
        self.status: Status = "interrupted"

    def request(self, message: str | None = None, *, status: Status = "interrupted") -> None:
        """Stop after the step in progress; ``message`` (e.g. "stopped by SIGTERM")
        begins the run's message."""
        if not self._event.is_set():
            self.message = message
            self.status = status
            self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()


@dataclass
class StepEvent:
    """What subscribers see, once per step and once more at the end.

    ``step`` counts the optimizer updates done: ``latent`` is the latent after
    ``step`` updates and ``image`` its image; ``losses`` are that latent's
    weighted terms per item (n,) plus ``total``. ``lr`` is the learning rate of
    the update about to happen (None for the final event).
    """

    step: int
    steps: int
    latent: torch.Tensor
    image: torch.Tensor
    losses: dict[str, torch.Tensor]
    lr: float | None
    final: bool = False


@dataclass
class Term:
    label: str
    index: int
    weight: float
    plugin: Any


@dataclass
class RunResult:
    """What a run did. ``edited_latent`` is the latent after ``edited_step`` updates
    (``steps_done`` updates were made; they differ when the last ones went
    non-finite). ``final_losses`` is the record of the edited latent, ``history``
    one record per step. ``edited_image`` is None only when a failed run could
    not even render its last latent; ``error`` is the exception of a failed run."""

    status: Status
    message: str
    steps_done: int
    source_latent: torch.Tensor
    edited_latent: torch.Tensor
    source_image: torch.Tensor
    edited_image: torch.Tensor | None
    history: list[dict[str, Any]] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    seeds: list[int] | None = None
    files: list[Path] = field(default_factory=list)
    edited_step: int = 0
    final_losses: dict[str, Any] | None = None
    error: BaseException | None = field(default=None, repr=False)
    photo: torch.Tensor | None = None
    """(n, 3, H, W): the prepared photos of a run that started from ``optimization.image``."""
    photos: list[dict[str, Any]] = field(default_factory=list)
    """Per photo: path, sha256, inverter, cached, reconstruction metrics (for run.json)."""

    @property
    def ok(self) -> bool:
        return self.status == "finished"


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` picks CUDA, then MPS, then the CPU; an unavailable device is an error."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device 'cuda' requested but CUDA is not available", hint="use --device cpu"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(
            "device 'mps' requested but MPS is not available", hint="use --device cpu"
        )
    return device


def _freeze(obj: object) -> None:
    if isinstance(obj, torch.nn.Module):
        obj.eval()
        obj.requires_grad_(False)


def _labels(configs: Sequence[Any]) -> list[str]:
    types = [c.type for c in configs]
    return [t if types.count(t) == 1 else f"{t}[{i}]" for i, t in enumerate(types)]


class Editor:
    """Builds a run's plugins from a validated config and runs the optimization.

    ``Editor(config, registries).run()`` returns a :class:`RunResult`;
    :meth:`subscribe` adds callbacks that receive every :class:`StepEvent`.
    ``models`` (a :class:`~soundguide.core.interfaces.ModelStore`) shares loaded
    networks with other runs of the process; by default each run loads its own.
    """

    def __init__(
        self,
        config: Any,
        registries: Registries | None = None,
        *,
        device: str | torch.device = "cpu",
        trust_checkpoint: bool = False,
        cache_dir: str | Path | None = None,
        progress: bool = True,
        plugins: Sequence[str | ModuleType] = (),
        stop: Stop | None = None,
        models: ModelStore | None = None,
    ) -> None:
        if registries is None:
            from soundguide.core.plugins import load_registries

            registries = load_registries(plugins=plugins)
        self.config = config
        self.registries = registries
        self.progress = progress
        self.context = RunContext(
            device=resolve_device(device),
            weights=registries.weights,
            trust_checkpoint=trust_checkpoint,
            cache_dir=Path(cache_dir) if cache_dir is not None else None,
            progress=progress,
            models=models,
        )
        self._callbacks: list[Callable[[StepEvent], None]] = []
        self._prepared = False
        self._built = False
        self.stop = stop if stop is not None else Stop()

    def subscribe(self, callback: Callable[[StepEvent], None]) -> Callable[[StepEvent], None]:
        self._callbacks.append(callback)
        return callback

    # -- building -----------------------------------------------------------------
    def prepare(self) -> None:
        """Build the generator, the active terms, encoders, targets and the start latent."""
        if self._prepared:
            return
        cfg = self.config
        ctx = self.context
        self._build_sources()
        n, w0_file = self._batch_size()
        ctx.batch_size = n
        self._build_terms()
        self._built = True

        self.targets: dict[str, torch.Tensor] = {}
        for term in self.guidances:
            g: Guidance = term.plugin
            with torch.no_grad():
                target = g.target(self.encoders[g.space])
            self.targets[term.label] = self._check_target(term, target, n).to(ctx.device)
        for encoder in self.encoders.values():
            # the loop only encodes images: an encoder may free what targets needed
            release = getattr(encoder, "after_targets", None)
            if callable(release):
                release()

        self.seeds: list[int] | None = None
        self.photo_start = None
        if cfg.optimization.image is not None:
            w0_file = self._photo_start(n)
        self.w0 = self._initial_latent(n, w0_file).to(ctx.device)
        with torch.no_grad():
            self.image0 = self.generator.synthesize(self.w0)
        self._check_image(self.image0, "the source latent")
        self._check_target_sizes()
        for term in self.regularizers:
            term.plugin.setup(self.w0, self.image0 if term.plugin.needs_image else None)
        self._prepared = True

    def build(self) -> None:
        """Build the generator, the active terms and their encoders, once; no targets,
        no start latent. :meth:`prepare` does this and more; a caller that brings its own
        start latents and per-item targets (:meth:`run_items`: the chunks of a video) calls
        it alone and reuses the models for every run."""
        if self._built:
            return
        self._build_sources()
        self._build_terms()
        self._built = True

    def _build_sources(self) -> None:
        cfg = self.config
        ctx = self.context
        # every input file and weights file at once, before anything is built:
        # one error lists all that is missing, known weights are downloaded now
        check_inputs(
            run_inputs(cfg), self.registries.weights, download=True, progress=self.progress
        )
        gen_cls = self.registries.generators.get(cfg.generator.type)
        guidance_labels = _labels(cfg.guidance)
        # weight-0 terms are never built, so they cost nothing
        guidance_cfgs = [(i, c) for i, c in enumerate(cfg.guidance) if c.weight != 0]

        # sources first: their constructors are cheap and check their inputs,
        # so a missing file fails before a large generator is loaded
        self.guidances: list[Term] = []
        for i, c in guidance_cfgs:
            plugin = self.registries.guidances.get(c.type)(c, ctx)
            self.guidances.append(Term(guidance_labels[i], i, c.weight, plugin))
        self.generator: Generator = gen_cls(cfg.generator, ctx)
        _freeze(self.generator)
        for name in ("num_layers", "latent_dim", "resolution"):
            value = getattr(self.generator, name)
            if not isinstance(value, int) or value < 1:
                raise PluginError(
                    f"generator {cfg.generator.type!r}: {name} must be a positive int, got {value!r}"
                )

    def _build_terms(self) -> None:
        cfg = self.config
        ctx = self.context
        reg_labels = _labels(cfg.regularizer)
        reg_cfgs = [(i, c) for i, c in enumerate(cfg.regularizer) if c.weight != 0]

        self.regularizers: list[Term] = []
        for i, c in reg_cfgs:
            plugin = self.registries.regularizers.get(c.type)(c, ctx)
            _freeze(plugin)
            self.regularizers.append(Term(reg_labels[i], i, c.weight, plugin))

        self.encoders: dict[str, ImageEncoder] = {}
        for term in self.guidances:
            g: Guidance = term.plugin
            if g.space not in self.encoders:
                encoder = g.build_encoder()
                if not callable(getattr(encoder, "encode_image", None)):
                    raise PluginError(
                        f"guidance {term.label!r}: build_encoder() returned no encode_image"
                    )
                _freeze(encoder)
                self.encoders[g.space] = encoder

    def run_items(
        self,
        start: torch.Tensor,
        targets: dict[str, torch.Tensor],
        *,
        weights: dict[str, torch.Tensor] | None = None,
        before: torch.Tensor | None = None,
    ) -> RunResult:
        """Optimize the items of ``start`` towards the given targets with the models
        :meth:`build` made, so that one Editor serves many runs (the chunks of a video).

        ``start``: (n, L, D) start latents. ``targets``: guidance label -> (D,) or
        (n, D), one entry per active guidance (the caller computes them, e.g. with
        ``guidance.target(editor.encoders[guidance.space])``). ``weights``: label ->
        (n,) per-item multipliers of that guidance's weight (0: no such term for that
        item). ``before``: (k, L, D) fixed latents that precede item 0 (a previous
        chunk's last frames), or (S, k, L, D) their values at each step, handed to sequence regularizers (``per_item = False``)
        with :meth:`Regularizer.set_context`. Config batch settings, seeds and photos
        are not used; the result is that of :meth:`run`.
        """
        self.build()
        ctx = self.context
        if start.ndim != 3 or start.shape[0] < 1:
            raise PluginError(f"run_items: start must be (n, L, D), got {tuple(start.shape)}")
        n = start.shape[0]
        ctx.batch_size = n
        missing = [t.label for t in self.guidances if t.label not in targets]
        if missing:
            raise PluginError(f"run_items: no targets for guidance {', '.join(missing)}")
        self.targets = {
            t.label: self._check_target(t, targets[t.label], n).to(ctx.device)
            for t in self.guidances
        }
        self.seeds = None
        self.photo_start = None
        self.w0 = start.detach().to(ctx.device).clone()
        with torch.no_grad():
            if n > 1 and torch.equal(self.w0, self.w0[:1].expand_as(self.w0)):
                # one start for all items (a video's frames): its image once
                self.image0 = self.generator.synthesize(self.w0[:1]).expand(n, -1, -1, -1)
            else:
                self.image0 = self.generator.synthesize(self.w0)
        self._check_image(self.image0, "the source latent")
        self._check_target_sizes()
        for term in self.regularizers:
            term.plugin.setup(self.w0, self.image0 if term.plugin.needs_image else None)
            if not term.plugin.per_item:
                term.plugin.set_context(None if before is None else before.to(ctx.device))
        base = {t.label: t.weight for t in self.guidances}
        for term in self.guidances:
            scale = (weights or {}).get(term.label)
            if scale is not None:
                term.weight = base[term.label] * scale.to(ctx.device, torch.float32).reshape(n)
        self._prepared = True
        try:
            return self.run()
        finally:
            for term in self.guidances:
                term.weight = base[term.label]

    def _batch_size(self) -> tuple[int, torch.Tensor | None]:
        opt = self.config.optimization
        claims: list[tuple[str, int, bool]] = []  # (who, n, may broadcast from 1)
        if opt.batch is not None:
            claims.append(("optimization.batch", opt.batch, False))
        if isinstance(opt.seed, list):
            claims.append(("optimization.seed", len(opt.seed), False))
        latents = None
        if opt.image is not None:
            photos = opt.image if isinstance(opt.image, list) else [opt.image]
            claims.append(("optimization.image", len(photos), True))
        if opt.latent is not None:
            latents = load_latent_file(
                opt.latent,
                self.generator.num_layers,
                self.generator.latent_dim,
                index=opt.latent_index,
                trust=self.context.trust_checkpoint,
                max_rows=opt.max_batch,
            )
            claims.append(("optimization.latent", latents.shape[0], True))
        for term in self.guidances:
            items = term.plugin.num_items
            if items is not None:
                claims.append((f"guidance.{term.index} ({term.label})", int(items), True))
        n = max([c[1] for c in claims], default=1)
        bad = [c for c in claims if c[1] != n and not (c[2] and c[1] == 1)]
        if bad:
            said = ", ".join(f"{who} says {k}" for who, k, _ in claims)
            raise ConfigError(f"batch size disagrees: {said}")
        if n > opt.max_batch:
            who = next(who for who, k, _ in claims if k == n)
            raise ConfigError(
                f"{who} makes a batch of {n} items, more than optimization.max_batch = "
                f"{opt.max_batch} items optimized together",
                hint="split it into several runs, or raise optimization.max_batch if your "
                "device has the memory",
            )
        return n, latents

    def _photo_start(self, n: int) -> torch.Tensor:
        """Invert the ``optimization.image`` photos; their noise maps become the generator's."""
        from soundguide.inversion.photos import start_from_photos

        cfg, ctx = self.config, self.context
        paths = cfg.optimization.image
        start = start_from_photos(
            paths if isinstance(paths, list) else [paths],
            cfg.inversion,
            self.registries,
            self.generator,
            cfg.generator.type,
            ctx,
            stop=lambda: self.stop.requested,
        )
        if start.noise is not None:
            self.generator.use_noise([m.expand(n, -1, -1, -1).to(ctx.device) for m in start.noise])
        ctx.photo = start.photos.expand(n, -1, -1, -1).to(ctx.device)
        self.photo_start = start
        return start.latent

    def _check_target(self, term: Term, target: Any, n: int) -> torch.Tensor:
        if not isinstance(target, torch.Tensor) or target.ndim not in (1, 2):
            shape = (
                tuple(target.shape) if isinstance(target, torch.Tensor) else type(target).__name__
            )
            raise PluginError(
                f"guidance {term.label!r}: target() must return (D,) or (n, D), got {shape}"
            )
        if target.ndim == 2 and target.shape[0] not in (1, n):
            raise ConfigError(
                f"guidance {term.label!r} gives {target.shape[0]} targets but the batch has {n} items"
            )
        if not torch.isfinite(target).all():
            raise PluginError(f"guidance {term.label!r}: its target embedding is not finite")
        return target.detach()

    def _initial_latent(self, n: int, from_file: torch.Tensor | None) -> torch.Tensor:
        opt = self.config.optimization
        gen = self.generator
        if from_file is not None:
            return from_file.expand(n, -1, -1).clone()
        if opt.mode == "generate":
            return gen.mean_latent().detach().expand(n, -1, -1).clone()
        self.seeds = opt.seeds(n)  # a seed list is one batch claim: its length is n
        # one generator per item: item i of a batch equals the same seed run alone
        parts = [
            gen.sample_latent(1, opt.truncation, torch.Generator().manual_seed(s)).detach()
            for s in self.seeds
        ]
        return torch.cat(parts).to(self.context.device)

    def _check_target_sizes(self) -> None:
        """Each target must live in its space: as many values as the space's image embeddings."""
        with torch.no_grad():
            sizes = {
                space: encoder.encode_image(self.image0[:1]).shape[-1]
                for space, encoder in self.encoders.items()
            }
        for term in self.guidances:
            space = term.plugin.space
            got = self.targets[term.label].shape[-1]
            if got != sizes[space]:
                raise PluginError(
                    f"guidance {term.label!r}: its target has {got} values but the images' "
                    f"embeddings in its space have {sizes[space]}",
                    hint="the source's model and the image encoder must share one embedding space "
                    "(e.g. SoundCLIP weights trained for this CLIP model)",
                )

    @staticmethod
    def _check_image(image: torch.Tensor, what: str) -> None:
        if not torch.isfinite(image).all():
            raise PluginError(
                f"the generator produced a non-finite image from {what}",
                hint='the generator\'s checkpoint may be damaged; try precision = "fp32" or '
                "another start latent",
            )

    # -- the loop -----------------------------------------------------------------
    def losses(self, w: torch.Tensor, image: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The weighted loss terms (n,) of latent ``w`` (its image synthesized if not given)."""
        self.prepare()
        if image is None:
            image = self.generator.synthesize(w)
        embeddings = {space: enc.encode_image(image) for space, enc in self.encoders.items()}
        terms: dict[str, torch.Tensor] = {}
        for term in self.guidances:
            g: Guidance = term.plugin
            terms[term.label] = term.weight * g.loss(embeddings[g.space], self.targets[term.label])
        for term in self.regularizers:
            r: Regularizer = term.plugin
            img = image if r.needs_image else None
            img0 = self.image0 if r.needs_image else None
            terms[term.label] = term.weight * r.loss(w, self.w0, img, img0)
        return terms

    def view(self, image: torch.Tensor) -> torch.Tensor:
        """Detached images cropped to the generator's content box, for saving and events."""
        box = self.generator.content_box
        image = image.detach()
        if box is None:
            return image
        top, left, height, width = box
        return image[..., top : top + height, left : left + width]

    def _emit(self, event: StepEvent) -> None:
        for callback in self._callbacks:
            callback(event)

    def run(self) -> RunResult:
        """Prepare (if not done yet), optimize, and return what was done (see :class:`RunResult`)."""
        self.stop.phase = "preparing"
        self.prepare()
        opt_cfg = self.config.optimization
        steps = opt_cfg.steps
        schedule = SCHEDULES[opt_cfg.schedule]
        w = self.w0.clone().requires_grad_(True)
        optimizer = LatentAdam(w, lr=opt_cfg.lr)
        history: list[dict[str, Any]] = []
        seconds: list[float] = []
        status: Status = "finished"
        message = f"finished {steps} steps"
        error: BaseException | None = None
        last_good, good_step = self.w0.clone(), 0  # the latest latent whose loss was finite
        done = self.w0.clone()  # the latent after the last completed update
        steps_done = 0
        bar = _progress(steps, self.progress)
        self.stop.phase = "running"
        try:
            for step in range(steps):
                if self.stop.requested:
                    status = self.stop.status
                    message = f"stopped after {steps_done} of {steps} updates; kept what was done"
                    if self.stop.message:
                        message = f"{self.stop.message}: {message}"
                    break
                started = time.perf_counter()
                lr = schedule(
                    step / steps, opt_cfg.lr, rampup=opt_cfg.rampup, rampdown=opt_cfg.rampdown
                )
                optimizer.lr = lr
                image = self.generator.synthesize(w)
                terms = self.losses(w, image)
                per_item = torch.stack(list(terms.values())).sum(dim=0)
                total = per_item.sum()
                record = _record(step, lr, terms, per_item)
                history.append(record)
                if not math.isfinite(record["total_sum"]):
                    status = "nonfinite"
                    bad = [k for k, v in terms.items() if not torch.isfinite(v).all()]
                    message = (
                        f"loss became non-finite after {step} updates (term {', '.join(bad) or 'total'}); "
                        f"stopped and kept the last latent with a finite loss"
                        + (f" (after {step - 1} updates)" if step > 0 else " (the source latent)")
                    )
                    break
                last_good, good_step = w.detach().clone(), step
                self._emit(
                    StepEvent(
                        step, steps, last_good, self.view(image), _detached(terms, per_item), lr
                    )
                )
                optimizer.zero_grad()
                total.backward()
                optimizer.step()
                for term in self.regularizers:
                    term.plugin.after_step(w, self.w0)
                done = w.detach().clone()
                steps_done = step + 1
                seconds.append(time.perf_counter() - started)
                bar.update(1)
                bar.set_postfix_str(_postfix(record), refresh=False)
        except KeyboardInterrupt:
            status = "interrupted"
            message = f"interrupted after {steps_done} of {steps} updates; kept what was done"
        except Exception as exc:  # a failing step must not lose the steps before it
            status, error = "failed", exc
            message = (
                f"failed after {steps_done} of {steps} updates ({exception_line(exc)}); "
                "kept what was done"
            )
        finally:
            bar.close()
            self.stop.phase = "finishing"

        # the latent to keep: the last one, unless it (its image or its loss) is not finite;
        # then the last one whose loss was finite (its record is in the history)
        edited, edited_step, edited_image, final_record = self.w0, 0, self.image0, None
        kept = False
        if status != "nonfinite":
            try:
                with torch.no_grad():
                    image = self.generator.synthesize(done)
                    terms = self.losses(done, image)
            except Exception as exc:  # e.g. out of memory: keep the latent, say why
                if status != "failed":
                    status, error = "failed", exc
                    message = (
                        f"could not render the edited latent after {steps_done} updates "
                        f"({exception_line(exc)}); kept the latent"
                    )
                edited, edited_step, edited_image, kept = done, steps_done, None, True
            else:
                if _all_finite(done, image, *terms.values()):
                    per_item = torch.stack(list(terms.values())).sum(dim=0)
                    final_record = _record(steps_done, None, terms, per_item)
                    edited, edited_step, edited_image, kept = done, steps_done, image, True
                    history.append(final_record)
                    self._emit(
                        StepEvent(
                            steps_done,
                            steps,
                            done,
                            self.view(image),
                            _detached(terms, per_item),
                            None,
                            final=True,
                        )
                    )
                elif status != "failed":
                    status = "nonfinite"
                    message = (
                        f"the latent became non-finite in the last update ({steps_done} updates "
                        f"done); kept the last latent with a finite loss (after {good_step} updates)"
                    )
        if not kept:
            for latent, at in ((last_good, good_step), (self.w0, 0)):
                with torch.no_grad():
                    image = self.generator.synthesize(latent)
                if _all_finite(latent, image):
                    edited, edited_step, edited_image = latent, at, image
                    break
            final_record = history[edited_step] if edited_step < len(history) else None
        files: list[Path] = list(self.generator.files())
        for term in [*self.guidances, *self.regularizers]:
            files.extend(term.plugin.files())
        photos = self.photo_start
        if photos is not None:
            files.extend(photos.files)
        return RunResult(
            status=status,
            message=message,
            steps_done=steps_done,
            source_latent=self.w0.detach().cpu(),
            edited_latent=edited.detach().cpu(),
            source_image=self.view(self.image0).cpu(),
            edited_image=None if edited_image is None else self.view(edited_image).cpu(),
            history=history,
            step_seconds=seconds,
            seeds=self.seeds,
            files=files,
            edited_step=edited_step,
            final_losses=final_record,
            error=error,
            photo=None if photos is None else self.view(self.context.photo).cpu(),
            photos=[] if photos is None else photos.records,
        )


def _all_finite(*tensors: torch.Tensor) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def _record(
    step: int, lr: float | None, terms: dict[str, torch.Tensor], per_item: torch.Tensor
) -> dict[str, Any]:
    values = {k: v.detach().float().cpu().tolist() for k, v in terms.items()}
    total = per_item.detach().float().cpu().tolist()
    return {"step": step, "lr": lr, "total": total, "total_sum": float(sum(total)), "terms": values}


def _detached(terms: dict[str, torch.Tensor], per_item: torch.Tensor) -> dict[str, torch.Tensor]:
    out = {k: v.detach() for k, v in terms.items()}
    out["total"] = per_item.detach()
    return out


def _postfix(record: dict[str, Any]) -> str:
    parts = [f"{k}={sum(v) / len(v):.4f}" for k, v in record["terms"].items()]
    return " ".join(parts + [f"total={record['total_sum']:.4f}"])


def _progress(steps: int, enabled: bool):
    from soundguide.core.progress import progress_bar

    return progress_bar(
        total=steps, desc="optimizing", unit="step", enabled=enabled, dynamic_ncols=True
    )
