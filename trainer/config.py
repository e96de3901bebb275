"""All training settings in one plain dataclass; the CLI maps its flags onto these fields one to one."""

from __future__ import annotations

import dataclasses

from trainer.losses import LOSS_TYPES, REGULARISERS

LOSSES = ("dspo", "dpo", "sft")
MIXED_PRECISION = ("no", "fp16", "bf16")
# The allowed values of the fields that take one of a few; the CLI offers them as its flags' choices.
CHOICES = {
    "backbone": ("upscaler", "onestep"),
    "loss": LOSSES,
    "loss_type": LOSS_TYPES,
    "reg": REGULARISERS,
    "mixed_precision": MIXED_PRECISION,
}

# beta's convention (SPEC §3): logit = -beta * [(e_w - e_ref_w) - (e_l - e_ref_l)] on per-element-mean errors,
# with no 1/2 factor. The public Diffusion-DPO code (Wallace et al.) writes -0.5 * beta_dpo * [...] on the
# same errors, with beta_dpo = 5000 for SD 1.5: an effective 2500 in our
# convention. The multi-step default follows the paper's code (2500). The one-step
# surrogate (SPEC §4) compares G(y) with the latents directly: its errors are of order 1, not of the order
# of a noise-prediction error gap, and no public code sets its beta; 10 gives logits of order 1 when the
# tuned model moves a winner's error by a tenth of the loser's, and is a starting point to tune.
DEFAULT_BETA = {"upscaler": 2500.0, "onestep": 10.0}


@dataclasses.dataclass
class TrainConfig:
    dataset: str
    model: str
    output_dir: str
    backbone: str = "upscaler"  # upscaler | onestep
    loss: str = "dspo"  # dspo (instance records) | dpo (image-level records) | sft (winners only)
    image_level_weight: float = 0.0  # dspo: also train on image-level records with this weight (0 = not)
    loss_type: str = "sigmoid"  # sigmoid | hinge | ipo
    beta: float | None = None  # None = the backbone's default (upscaler 2500, onestep 10); see DEFAULT_BETA
    text_feedback: bool = True  # append content_text to the prompt (SPEC §5); False for the ablation
    resolution: int = 512  # training crop size in SR pixels
    buckets: tuple[int, ...] = ()  # more crop sizes; a record trains at the smallest size holding its box
    flip: bool = True  # random horizontal flips (one decision for LQ, winner, loser and mask)
    batch_size: int = 4  # records (pairs) per device per micro-batch
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step
    max_steps: int = 1000  # optimizer steps
    learning_rate: float = 1e-5  # AdamW, constant after the warm-up
    lr_warmup_steps: int = 0  # linear warm-up, in optimizer steps
    weight_decay: float = 1e-2  # AdamW
    adam_beta1: float = 0.9  # AdamW
    adam_beta2: float = 0.999  # AdamW
    adam_epsilon: float = 1e-8  # AdamW
    max_grad_norm: float = 1.0  # 0 disables clipping
    lora_rank: int = 16  # 0 = full fine-tuning against a frozen copy
    lora_alpha: float | None = None  # None = lora_rank
    lora_vae_encoder: bool = False  # onestep: LoRA on the VAE encoder too
    noise_level: int = 20  # upscaler: noise added to the LQ conditioning, as its pipeline does by default
    reg: str = "sft"  # onestep regulariser: sft (to the winner) | ref (to the reference output)
    reg_weight: float = 1.0  # onestep only; 0 turns the regulariser off
    mixed_precision: str = "no"  # no | fp16 | bf16
    compile: bool = False  # torch.compile the trained networks (after the FLOP-counting first step)
    seed: int = 0  # LoRA initialisation, data order, crops, noise and timesteps
    checkpoint_every: int = 0  # optimizer steps; 0 = only the final weights
    resume: str | None = None  # "latest" or a checkpoint folder
    log_every: int = 10  # optimizer steps between log lines
    val_every: int = 0  # 0 = validate only at the end
    val_repeats: int = 4  # noise draws per validation record
    num_workers: int = 0  # data-loading processes
    progress: bool = True  # a tqdm progress bar
    peak_tflops: float | None = None  # for MFU when the GPU is not in the built-in table
    hub_base_model: str | None = None  # model card: the Hub id of --model (else read from an HF cache path)
    hub_dataset: str | None = None  # model card: the dataset's Hub id (the manifest's dataset_id if None)
    license: str = "other"  # model card: a Hub licence id for the weights (the base model's terms apply)

    def __post_init__(self) -> None:
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        self.buckets = tuple(self.buckets)
        for name in ("batch_size", "gradient_accumulation_steps", "max_steps", "resolution", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.beta is None:
            self.beta = DEFAULT_BETA[self.backbone]
        if self.beta <= 0:
            raise ValueError(f"beta must be positive, got {self.beta}")
        if self.image_level_weight < 0:
            raise ValueError(f"image_level_weight must be >= 0, got {self.image_level_weight}")
        if self.image_level_weight and self.loss != "dspo":
            raise ValueError(
                "image_level_weight mixes image-level records into --loss dspo; dpo and sft "
                "train on image-level records already"
            )
        if self.lora_rank < 0:
            raise ValueError(f"lora_rank must be >= 0, got {self.lora_rank}")
        if self.lora_vae_encoder and self.backbone != "onestep":
            raise ValueError("lora_vae_encoder applies to the onestep backbone only")

    @property
    def uses_regulariser(self) -> bool:
        return self.backbone == "onestep" and self.loss != "sft" and self.reg_weight > 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class PretrainConfig:
    """Settings of `dspo pretrain` (trainer/pretrain.py): a small x4 upscaler trained from scratch."""

    vae_steps: int = 3000
    unet_steps: int = 1000
    crop: int = 64  # HQ crop side of the UNet's batches (a multiple of 16); the LQ crop is crop / 4
    vae_crop: int = 32  # HQ crop side of the VAE's batches: it is convolutional, small crops train it as well
    batch_size: int = 8
    vae_lr: float = 1e-3
    unet_lr: float = 1e-3
    width: int = 1  # channel multiplier of the VAE and UNet (1: trainer/tiny.py's sizes)
    latent_channels: int = 8  # SD's 4 at factor 4 keep 1/12 of the numbers: too few for a model this small
    prompt: str = "a photo"  # the condition the UNet learns; sources should use the same prompt
    noise_level: int = 20  # LQ noise level of the conditioning, the pipeline's default at inference
    kl_weight: float = 1e-6
    seed: int = 0
    device: str = "cpu"
