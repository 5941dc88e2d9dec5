#!/usr/bin/env python3
"""Times the PyTorch reference of EditMGT at the shapes of our criterion benches.

This script holds no reference code: it imports the reference's own classes and functions
from a checkout of https://github.com/weichow23/EditMGT (``--reference``, the folder that holds
``src/``) and drives them with random weights and random inputs, on the CPU, in float32,
under ``torch.no_grad()``. See README.md next to this file for the packages, the commands and
what each row corresponds to on the Rust side.

Each row: one warm-up call, then calls until both ``--min-iters`` calls and ``--min-seconds``
seconds are reached (heavy rows are capped by ``--max-iters``); the median and the minimum are
printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
DEFAULT_FIXTURES = HERE.parent.parent / "fixtures" / "real-shapes"
BENCHES = ("mgt", "attention", "vq", "gemma", "sampler", "consolidation")
# Heavy modes run only when named in --only.
EXTRA_BENCHES = ("pipeline", "forward_check", "train")
# The negative prompt our CLI uses by default (editmgt-pipeline's DEFAULT_NEGATIVE_PROMPT).
NEGATIVE_PROMPT = ("worst quality, low quality, low res, blurry, distortion, watermark, logo, signature, text, "
                   "jpeg artifacts, signature, sketch, duplicate, ugly, identifying mark")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference", default="/tmp/pyref", help="checkout of weichow23/EditMGT (holds src/)")
    p.add_argument("--fixtures", default=str(DEFAULT_FIXTURES), help="folder with editmgt.json, vqvae.json, llm_encoder.json")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--only", nargs="*", choices=BENCHES + EXTRA_BENCHES, default=list(BENCHES),
                   help="benches to run (`pipeline` only when named)")
    p.add_argument("--min-iters", type=int, default=10, help="minimum timed calls per row")
    p.add_argument("--max-iters", type=int, default=200, help="maximum timed calls per row")
    p.add_argument("--min-seconds", type=float, default=5.0, help="minimum timed seconds per row")
    p.add_argument("--heavy-iters", type=int, default=5, help="timed calls for the MGT/VQ/Gemma rows")
    p.add_argument("--timestep", type=int, default=35, help="MGT timestep (cost does not depend on it)")
    p.add_argument("--mgt-bf16", action="store_true",
                   help="also time the MGT forward with the model and its float inputs in bfloat16 (PyTorch's own "
                        "bf16 products on the CPU, oneDNN's AMX/AVX512-BF16 kernels where the CPU has them)")
    p.add_argument("--sampler-steps", type=int, default=36, help="schedule length for the sampler step (our bench: 36)")
    p.add_argument("--sampler-step-index", type=int, default=0, help="step index (our bench: 0, all masked)")
    p.add_argument("--consolidation-heads", type=int, nargs="*", default=[1, 8],
                   help="heads per captured map; 1 = the data volume of our bench, 8 = the released model")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    pipe = p.add_argument_group("pipeline", "a whole edit with a model folder (benches/realscale.sh)")
    pipe.add_argument("--model", default=None, help="model folder in the released layout (e.g. synth-checkpoint's)")
    pipe.add_argument("--image", default=str(HERE.parent.parent / "fixtures" / "tiny" / "cases" / "source.png"),
                      help="image to edit (default: the 1024x1024 fixture)")
    pipe.add_argument("--prompt", default="make it into Ghibli style", help="the instruction")
    pipe.add_argument("--steps", type=int, default=2, help="sampling steps")
    pipe.add_argument("--resolution", type=int, default=1024, help="height and width of the edit")
    pipe.add_argument("--guidance", type=float, default=6.0, help="guidance scale (our CLI's default)")
    pipe.add_argument("--strength", type=float, default=1.1, help="reference strength (our CLI's default)")
    pipe.add_argument("--pipeline-dtype", choices=("f32", "bf16"), default="f32", help="float type of every component")
    pipe.add_argument("--device", default="cpu",
                      help="torch device of the pipeline bench (cpu, cuda); on a GPU the random generator is on it too")
    check = p.add_argument_group("forward_check", "the real-size logits check (benches/realscale.sh)")
    check.add_argument("--check-file", default=None,
                       help="inputs and our logits, written by `cargo run --example forward_check`")
    check.add_argument("--check-tolerance", type=float, default=1e-3,
                       help="largest |ours - reference| allowed, relative to max |reference| (default 1e-3)")
    train = p.add_argument_group("train", "one training step at the released width (editmgt-train's train_step bench)")
    train.add_argument("--train-modes", nargs="*", choices=("full", "lora"), default=["full", "lora"],
                       help="full fine-tuning and/or LoRA r 16, alpha 32 on to_q/k/v (reference stream); run one "
                            "mode per process to read its own peak memory")
    train.add_argument("--train-iters", type=int, default=5, help="timed steps per mode")
    return p.parse_args()


def measure(fn, min_iters, max_iters, min_seconds):
    fn()  # warm-up
    times = []
    start = time.perf_counter()
    while len(times) < max_iters and (len(times) < min_iters or time.perf_counter() - start < min_seconds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "iters": len(times)}


def fmt(seconds: float) -> str:
    if seconds >= 1.0:
        return f"{seconds:.3f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} us"


def load_config(fixtures: Path, name: str) -> dict:
    with open(fixtures / name) as f:
        return json.load(f)["config"]


def bench_mgt(args, torch, rows):
    from src.transformer import Transformer2DModel
    from src.pipeline import _prepare_latent_image_ids

    config = load_config(Path(args.fixtures), "editmgt.json")
    config.update(num_layers=1, num_single_layers=2)
    model = Transformer2DModel(**config).eval().float()
    # Strength 1.1 on every attention module, as the reference pipeline sets it.
    for name, module in model.named_modules():
        if name.endswith(".attn"):
            module.reference_strength_factor = torch.ones(1, 1) * 1.1

    g = torch.Generator().manual_seed(0)
    mask_id = config["vocab_size"] - 1
    tokens = torch.randint(0, config["codebook_size"], (2, 64, 64), generator=g)
    tokens[torch.rand(2, 64, 64, generator=g) < 0.6] = mask_id
    reference = torch.randint(0, config["codebook_size"], (2, 64, 64), generator=g)
    states = torch.randn(2, 256, config["joint_attention_dim"], generator=g)
    pooled = torch.randn(2, config["pooled_projection_dim"], generator=g)
    micro = torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 6.0]] * 2)
    timestep = torch.tensor([args.timestep] * 2, dtype=torch.long)
    # ids as the pipeline builds them for a 1024x1024 edit (64x64 tokens, no up-sampling)
    img_ids = _prepare_latent_image_ids(64, 64, tokens.device, tokens.dtype, up_sample=False)
    ref_ids = _prepare_latent_image_ids(64, 64, reference.device, reference.dtype, up_sample=False)
    txt_ids = torch.zeros(256, 3)

    def forward():
        return model(
            hidden_states=tokens,
            micro_conds=micro,
            pooled_projections=pooled,
            encoder_hidden_states=states,
            img_ids=img_ids,
            txt_ids=txt_ids,
            timestep=timestep,
            reference_image_hidden_states=reference,
            reference_image_ids=ref_ids,
            joint_attention_kwargs={"scale": None},
            lora_part_enable=False,
        )

    first_single = len(model.transformer_blocks)  # block id of single-stream block 0

    def capture():
        out = forward()
        proc = model.single_transformer_blocks[0].attn.processor
        return out, proc.attention_weights["text_to_image"]

    n = args.heavy_iters
    model.clear_attention_hooks()
    out = forward()
    assert tuple(out.shape) == (2, config["codebook_size"], 64, 64), out.shape
    rows.append(("mgt_forward / no_capture", measure(forward, n, n, 0.0)))
    model.register_attention_hooks([first_single])
    _, t2i = capture()
    assert tuple(t2i.shape) == (2, config["num_attention_heads"], 256, 1024), t2i.shape
    rows.append(("mgt_forward / capture_single_block", measure(capture, n, n, 0.0)))
    model.clear_attention_hooks()

    if args.mgt_bf16:
        # The same call with every weight and float input in bfloat16: what `--dtype bf16` is
        # weighed against when PyTorch too may use the CPU's bf16 instructions.
        model.to(torch.bfloat16)
        for name, module in model.named_modules():
            if name.endswith(".attn"):
                module.reference_strength_factor = module.reference_strength_factor.to(torch.bfloat16)
        states, pooled, micro = (t.to(torch.bfloat16) for t in (states, pooled, micro))
        txt_ids = txt_ids.to(torch.bfloat16)  # as the pipeline makes them; the image ids stay integers
        out = forward()
        assert out.dtype == torch.bfloat16 and tuple(out.shape) == (2, config["codebook_size"], 64, 64)
        rows.append(("mgt_forward / no_capture, bf16", measure(forward, n, n, 0.0)))


def bench_attention(args, torch, rows):
    """The joint attention of one MGT block at the bench's shapes, alone: what PyTorch's
    scaled_dot_product_attention takes where our fused attention runs (editmgt-core's bench)."""
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 8, 2304, 128, generator=g) for _ in range(3))
    # log(1.1) where exactly one of query and key is a reference token (the last 1024 rows)
    is_ref = (torch.arange(2304) >= 1280).float()
    bias = ((is_ref[:, None] - is_ref[None, :]).abs() * torch.log(torch.tensor(1.1))).view(1, 1, 2304, 2304)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    rows.append(("attention / [2, 8, 2304, 128] with strength bias",
                 measure(lambda: sdpa(q, k, v, attn_mask=bias), args.min_iters, args.max_iters, args.min_seconds)))
    rows.append(("attention / [2, 8, 2304, 128] without bias",
                 measure(lambda: sdpa(q, k, v), args.min_iters, args.max_iters, args.min_seconds)))


def bench_vq(args, torch, rows):
    from diffusers import VQModel
    from diffusers.image_processor import VaeImageProcessor
    from src.pipeline import Pipeline, pilimage_to_token

    config = load_config(Path(args.fixtures), "vqvae.json")
    vq = VQModel(**config).eval().float()
    scale = 2 ** (len(config["block_out_channels"]) - 1)
    # A stand-in for the pipeline object: only the attributes the reference helpers read.
    pipe = SimpleNamespace(
        vqvae=vq,
        _execution_device=torch.device("cpu"),
        scheduler=SimpleNamespace(config=SimpleNamespace(mask_token_id=8255)),
        vae_scale_factor=scale,
        image_processor=VaeImageProcessor(vae_scale_factor=scale, do_normalize=False),
    )
    image = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))

    def encode():
        return pilimage_to_token(pipe, image)

    tokens = encode()
    assert tuple(tokens.shape) == (1, 256 // scale, 256 // scale), tokens.shape

    def decode(t=tokens):
        return Pipeline.safe_decode_latents(pipe, t, 1, 256, 256, "pt")

    assert tuple(decode().shape) == (1, 3, 256, 256)

    def both():
        return decode(encode())

    n = args.heavy_iters
    rows.append(("vq / encode+quantize", measure(encode, n, n, 0.0)))
    rows.append(("vq / decode", measure(decode, n, n, 0.0)))
    rows.append(("vq / encode+decode", measure(both, n, n, 0.0)))


def bench_gemma(args, torch, rows):
    from transformers import Gemma2Config, Gemma2Model

    config = load_config(Path(args.fixtures), "llm_encoder.json")
    config.update(num_hidden_layers=2, vocab_size=4096, torch_dtype="float32")
    cfg = Gemma2Config(**config)
    cfg._attn_implementation = "eager"
    model = Gemma2Model(cfg).eval().float()
    ids = torch.tensor([[(i * 37) % 4096 for i in range(256)]])

    def forward():
        return model(input_ids=ids, use_cache=False).last_hidden_state

    assert tuple(forward().shape) == (1, 256, config["hidden_size"])
    n = args.heavy_iters
    rows.append(("gemma2 forward / 2304 wide, 2 layers, 1x256", measure(forward, n, n, 0.0)))


def bench_sampler(args, torch, rows):
    from src.scheduler import Scheduler

    mask_id = 8255
    scheduler = Scheduler(mask_token_id=mask_id, masking_schedule="cosine")
    scheduler.set_timesteps(args.sampler_steps, (2, 0))
    timestep = scheduler.timesteps[args.sampler_step_index]
    g = torch.Generator().manual_seed(7)
    logits = torch.rand(1, 8192, 64, 64, generator=g) * 12.0 - 6.0
    sample = torch.full((1, 64, 64), mask_id, dtype=torch.long)
    noise = torch.Generator().manual_seed(1)

    def step():
        return scheduler.step(model_output=logits, timestep=timestep, sample=sample, generator=noise,
                              starting_mask_ratio=1.0).prev_sample

    remasked = int((step() == mask_id).sum())
    label = f"sampler / step 4096 x 8192 (all masked, {args.sampler_steps} steps, index {args.sampler_step_index}, {remasked} re-masked)"
    rows.append((label, measure(step, args.min_iters, args.max_iters, args.min_seconds)))

    half = torch.full_like(logits, 0.5)

    def guidance():
        # the guidance combination the reference pipeline applies to the logits of a batch pair
        return half + 6.0 * (logits - half)

    rows.append(("sampler / guidance u + g (c - u) over 4096 x 8192",
                 measure(guidance, args.min_iters, args.max_iters, args.min_seconds)))


def bench_consolidation(args, torch, rows):
    from src.local_utils import rescale_scores, smooth_local_scores, tokens_to_attn
    from src.scheduler import upsample_score_map

    t = torch.arange(256).view(256, 1)
    n = torch.arange(1024).view(1, 1024)
    for heads in args.consolidation_heads:
        blocks = []
        for k in range(9):
            # the values of our bench's maps ([1, 256, 1024] per block), per head, for the
            # guidance pair (the reference keeps the conditional half)
            m = (((k * 31 + t * 17 + n * 7) % 101).float() / 101.0 / 1024.0)
            m = m.expand(2, heads, 256, 1024).contiguous()
            proc = SimpleNamespace(attention_weights={"text_to_image": m, "reference_text_to_image": None})
            blocks.append(SimpleNamespace(attn=SimpleNamespace(processor=proc)))
        pipe = SimpleNamespace(
            attention_enable_blocks=list(range(9)),
            local_query_text=None,
            tokenizer=None,
            tokenizer_t5=None,
            transformer=SimpleNamespace(transformer_blocks=[], single_transformer_blocks=blocks,
                                        text_encoder_architecture="CLIP_Gemma2"),
        )

        def consolidate():
            return tokens_to_attn(pipe=pipe, global_enable=False, prompt=None)[1]

        local = consolidate()
        assert tuple(local.shape) == (1, 1024), local.shape
        rows.append((f"consolidate 9 blocks x {heads} head(s) x 256 rows x 1024 tokens",
                     measure(consolidate, args.min_iters, args.max_iters, args.min_seconds)))

    def smooth():
        s = smooth_local_scores(rescale_scores(local), method="adaptive", strength=1.0)
        return upsample_score_map(s)

    assert tuple(smooth().shape) == (1, 4096)
    rows.append(("rescale + adaptive smoothing + bicubic x2 (32x32)",
                 measure(smooth, args.min_iters, args.max_iters, args.min_seconds)))


def bench_pipeline(args, torch, rows):
    """Loads every component of ``--model`` as the reference's ``init_edit_mgt`` does (from a
    local folder instead of the Hub) and times one edit: load, the whole call, and each step
    (through the pipeline's step callback, so steps 2..N: the step and fixed-cost rows need two
    steps or more). `benches/realscale.sh --with-reference` runs it."""
    import resource

    from diffusers import VQModel
    from PIL import Image
    from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPTextModelWithProjection, CLIPTokenizer
    from src.pipeline import Pipeline
    from src.scheduler import Scheduler
    from src.transformer import Transformer2DModel

    if not args.model:
        raise SystemExit("bench_reference.py: the pipeline bench needs --model (a model folder)")
    model = str(Path(args.model).resolve())
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[args.pipeline_dtype]

    start = time.perf_counter()
    clip = CLIPTextModelWithProjection.from_pretrained(model, subfolder="text_encoder", torch_dtype=dtype)
    clip_tokenizer = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer")
    gemma = AutoModelForCausalLM.from_pretrained(model, subfolder="llm_encoder", output_hidden_states=True,
                                                 torch_dtype=dtype)
    gemma_tokenizer = AutoTokenizer.from_pretrained(model, subfolder="llm_encoder")
    vq = VQModel.from_pretrained(model, subfolder="vqvae", torch_dtype=dtype)
    scheduler = Scheduler.from_pretrained(model, subfolder="scheduler")
    transformer = Transformer2DModel.from_pretrained(model, subfolder="editmgt", torch_dtype=dtype)
    pipe = Pipeline(transformer=transformer, tokenizer=clip_tokenizer, text_encoder=clip, vqvae=vq,
                    scheduler=scheduler, text_encoder_t5=gemma, tokenizer_t5=gemma_tokenizer).to(args.device)
    cuda = args.device.startswith("cuda")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    sync()
    load_s = time.perf_counter() - start

    image = Image.open(args.image).convert("RGB")
    marks = []

    def callback(step, timestep, latents):
        sync()
        marks.append(time.perf_counter())

    start = time.perf_counter()
    out = pipe(prompt=[args.prompt], negative_prompt=[NEGATIVE_PROMPT], height=args.resolution,
               width=args.resolution, reference_image=[image], reference_strength=args.strength,
               guidance_scale=args.guidance, num_inference_steps=args.steps,
               generator=torch.Generator(device=args.device).manual_seed(0), callback=callback, callback_steps=1)
    sync()
    total_s = time.perf_counter() - start
    assert len(out.images) == 1
    steps = [b - a for a, b in zip(marks, marks[1:])]
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # kB on Linux

    def row(label, seconds):
        rows.append((label, {"median_s": seconds, "min_s": seconds, "iters": 1}))

    row("pipeline / load", load_s)
    row(f"pipeline / edit {args.resolution}x{args.resolution}, {args.steps} step(s), {args.pipeline_dtype}", total_s)
    if steps:
        # Callback to callback: one transformer step (both guidance halves) and one sampler step.
        row("pipeline / step (mean after the first)", statistics.mean(steps))
        row("pipeline / fixed cost (edit minus steps after the first)", total_s - sum(steps))
    print(f"  pipeline peak RSS: {peak_gib:.2f} GiB", flush=True)
    if cuda:
        print(f"  pipeline peak GPU memory: {torch.cuda.max_memory_allocated() / 1024 ** 3:.2f} GiB", flush=True)


def bench_forward_check(args, torch, rows):
    """Runs the reference transformer of ``--model`` (float32) on the inputs in ``--check-file``
    and compares its logits with ours from the same file: the largest absolute difference
    relative to the largest reference logit must be within ``--check-tolerance``."""
    from safetensors.torch import load_file
    from src.pipeline import _prepare_latent_image_ids
    from src.transformer import Transformer2DModel

    if not args.model or not args.check_file:
        raise SystemExit("bench_reference.py: forward_check needs --model and --check-file")
    data = load_file(args.check_file)
    start = time.perf_counter()
    model = Transformer2DModel.from_pretrained(str(Path(args.model).resolve()), subfolder="editmgt",
                                               torch_dtype=torch.float32).eval()
    load_s = time.perf_counter() - start
    strength = float(data["strength"][0])
    for name, module in model.named_modules():
        if name.endswith(".attn"):
            module.reference_strength_factor = torch.ones(1, 1) * strength
    tokens, reference = data["tokens"], data["reference"]
    _, h, w = tokens.shape
    states = data["encoder_hidden_states"]
    img_ids = _prepare_latent_image_ids(h, w, tokens.device, tokens.dtype, up_sample=False)
    ref_ids = _prepare_latent_image_ids(h, w, reference.device, reference.dtype, up_sample=False)
    txt_ids = torch.zeros(states.shape[1], 3)
    start = time.perf_counter()
    logits = model(hidden_states=tokens, micro_conds=data["micro_conds"], pooled_projections=data["pooled"],
                   encoder_hidden_states=states, img_ids=img_ids, txt_ids=txt_ids,
                   timestep=data["timestep"].long(), reference_image_hidden_states=reference,
                   reference_image_ids=ref_ids, joint_attention_kwargs={"scale": None},
                   lora_part_enable=False).float()
    forward_s = time.perf_counter() - start
    ours = data["logits"]
    assert tuple(ours.shape) == tuple(logits.shape), (ours.shape, logits.shape)
    diff = (ours - logits).abs().max().item()
    scale = logits.abs().max().item()
    relative = diff / max(scale, 1e-30)
    ok = relative <= args.check_tolerance
    print(f"  forward_check: max |ours - reference| = {diff:.3e}, max |reference| = {scale:.3e}, "
          f"relative {relative:.3e} (tolerance {args.check_tolerance:.0e}): {'ok' if ok else 'FAILED'}", flush=True)
    rows.append(("forward_check / load transformer", {"median_s": load_s, "min_s": load_s, "iters": 1}))
    rows.append(("forward_check / one forward, batch 1", {"median_s": forward_s, "min_s": forward_s, "iters": 1}))
    if not ok:
        raise SystemExit(f"forward_check: relative difference {relative:.3e} above {args.check_tolerance:.0e}")


def peak_rss_mib() -> float:
    """The process's peak resident memory (ru_maxrss, KiB on Linux) in MiB."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_train(args, torch, rows):
    """One step of train/train.py's edit training: the transformer with the reference injected
    (`lora_part_enable=True`), float timestep `ratio * 1000`, cross entropy over the masked
    positions, backward, `clip_grad_norm_(10.0)` (editmgt-train's default), AdamW with the reference's decay groups.
    Shapes as editmgt-train's bench: released width, 1 double + 2 single blocks, batch 1, a
    64x64 target with every other position masked, a 64x64 reference, 256 text rows."""
    from src.transformer import Transformer2DModel
    from src.pipeline import _prepare_latent_image_ids
    import torch.nn.functional as F

    config = load_config(Path(args.fixtures), "editmgt.json")
    config.update(num_layers=1, num_single_layers=2)
    codebook, mask_id = config["codebook_size"], config["vocab_size"] - 1
    cells = 64 * 64
    index = torch.arange(cells, dtype=torch.long)
    target = (index * 2654435761) % codebook
    reference = ((index * 40503 + 7) % codebook).reshape(1, 64, 64)
    masked = index % 2 == 0
    labels = torch.where(masked, target, torch.full_like(target, -100)).reshape(1, cells)
    tokens = torch.where(masked, torch.full_like(target, mask_id), target).reshape(1, 64, 64)
    g = torch.Generator().manual_seed(0)
    states = torch.randn(1, 256, config["joint_attention_dim"], generator=g)
    pooled = torch.randn(1, config["pooled_projection_dim"], generator=g)
    micro = torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 6.0]])
    timestep = torch.tensor([500.0])
    img_ids = _prepare_latent_image_ids(64, 64, tokens.device, tokens.dtype, up_sample=False)
    ref_ids = _prepare_latent_image_ids(64, 64, reference.device, reference.dtype, up_sample=False)
    txt_ids = torch.zeros(256, 3)
    no_decay = ["bias", "layer_norm.weight", "mlm_ln.weight", "embeddings.weight"]

    for mode in args.train_modes:
        model = Transformer2DModel(**config).float()
        if mode == "lora":
            from peft import LoraConfig
            model.add_adapter(LoraConfig(r=16, lora_alpha=32, target_modules=["to_q", "to_k", "to_v"]))
        model.train()
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        groups = [
            {"params": [p for n, p in named if not any(nd in n for nd in no_decay)], "weight_decay": 1e-2},
            {"params": [p for n, p in named if any(nd in n for nd in no_decay)], "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)

        def step():
            with torch.enable_grad():
                logits = model(
                    hidden_states=tokens,
                    encoder_hidden_states=states,
                    micro_conds=micro,
                    pooled_projections=pooled,
                    img_ids=img_ids,
                    txt_ids=txt_ids,
                    timestep=timestep,
                    reference_image_hidden_states=reference,
                    reference_image_ids=ref_ids,
                    lora_part_enable=True,
                ).reshape(1, codebook, -1).permute(0, 2, 1).reshape(-1, codebook)
                loss = F.cross_entropy(logits, labels.view(-1), ignore_index=-100, reduction="mean")
                loss.backward()
                torch.nn.utils.clip_grad_norm_([p for _, p in named], 10.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                return loss.item()

        n = args.train_iters
        trained = sum(p.numel() for _, p in named)
        rows.append((f"train_step / {mode} ({trained} trained weights)", measure(step, n, n, 0.0)))
        print(f"train_step / {mode}: peak resident memory {peak_rss_mib():.0f} MiB", flush=True)
        del model, optimizer, groups, named


def main() -> int:
    args = parse_args()
    ref = Path(args.reference).resolve()
    if not (ref / "src" / "transformer.py").is_file():
        print(f"no reference checkout at {ref} (expected src/transformer.py)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ref))
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, reference {ref}", flush=True)
    try:
        print(f"load average before: {os.getloadavg()}", flush=True)
    except OSError:
        pass

    rows = []
    runners = {"mgt": bench_mgt, "attention": bench_attention, "vq": bench_vq, "gemma": bench_gemma, "sampler": bench_sampler,
               "consolidation": bench_consolidation, "pipeline": bench_pipeline,
               "forward_check": bench_forward_check, "train": bench_train}
    with torch.no_grad():
        for name in BENCHES + EXTRA_BENCHES:
            if name in args.only:
                before = len(rows)
                runners[name](args, torch, rows)
                for label, r in rows[before:]:
                    print(f"  {label}: median {fmt(r['median_s'])} (min {fmt(r['min_s'])}, {r['iters']} calls)", flush=True)

    try:
        load = os.getloadavg()
    except OSError:
        load = None
    width = max(len(label) for label, _ in rows)
    print()
    print(f"{'bench'.ljust(width)} | {'median':>10} | {'min':>10} | calls")
    print(f"{'-' * width}-|-{'-' * 10}-|-{'-' * 10}-|------")
    for label, r in rows:
        print(f"{label.ljust(width)} | {fmt(r['median_s']):>10} | {fmt(r['min_s']):>10} | {r['iters']}")
    if load is not None:
        print(f"\nload average after: {load}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "threads": args.threads, "load_after": load,
                       "rows": [{"bench": label, **r} for label, r in rows]}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
