"""Diffusion candidates from a tiny random upscaler and SAM masks from a tiny random SamModel flow
through the real jobs to tasks; a registered LoRA, once the project switches to it, makes the next
round's candidates (SQLite: the database plays no part here)."""

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select

from annotation_server.deps import SESSION_COOKIE, csrf_token_for
from dspo import jobs
from dspo.datasets import records_path
from dspo.db import session_scope
from dspo.ingest import add_source
from dspo.models import Candidate, Dataset, Instance, Project, Task
from dspo.retrain import retrain_tick
from dspo.runtime import Runtime
from tests.datasets.helpers import make_project, users, vote_all, wait_jobs
from tests.helpers import png_bytes
from worker.generators import get_generator


@pytest.fixture
def database_url(tmp_path: Path, sqlite_template: Path) -> str:
    shutil.copy(sqlite_template, tmp_path / "dspo.db")
    return f"sqlite:///{tmp_path / 'dspo.db'}"


def tiny_sam(folder: Path) -> Path:
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    torch.manual_seed(0)
    config = SamConfig(
        vision_config={
            "hidden_size": 32,
            "output_channels": 16,
            "num_pos_feats": 8,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 64,
            "patch_size": 16,
            "mlp_dim": 64,
            "global_attn_indexes": [1],
            "window_size": 2,
        },
        prompt_encoder_config={
            "hidden_size": 16,
            "image_size": 64,
            "patch_size": 16,
            "mask_input_channels": 4,
        },
        mask_decoder_config={
            "hidden_size": 16,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "mlp_dim": 32,
            "iou_head_hidden_dim": 16,
        },
    )
    SamModel(config).save_pretrained(folder)
    processor = SamImageProcessor(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64})
    SamProcessor(processor).save_pretrained(folder)
    return folder


def tiny_lora(model: Path, folder: Path) -> Path:
    """A LoRA on the tiny upscaler's attention, with random (non-zero) weights so that it shows."""
    from diffusers import StableDiffusionUpscalePipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(1)
    pipe = StableDiffusionUpscalePipeline.from_pretrained(model)
    targets = ["to_q", "to_k", "to_v", "to_out.0"]
    pipe.unet.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=targets, init_lora_weights=False))
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
    StableDiffusionUpscalePipeline.save_lora_weights(folder, unet_lora_layers=layers)
    return folder


def test_diffusion_and_sam_to_tasks_then_a_lora_round(
    runtime: Runtime, client: TestClient, admin: dict[str, str], tmp_path: Path
) -> None:
    from trainer.tiny import make_tiny_model

    model = make_tiny_model(tmp_path / "upscaler", "upscaler")
    sam = tiny_sam(tmp_path / "sam")
    project_id = make_project(
        runtime,
        n_sources=1,
        generator="diffusion",
        generator_settings={"model": str(model), "guidance": [5.0, 7.5], "steps": [2, 3], "batch_size": 2},
        segmenter="sam",
        segmenter_settings={
            "model": str(sam),
            "points_per_side": 4,
            "pred_iou_thresh": None,
            "stability_score_thresh": None,
        },
        min_area_fraction=0.01,
    )
    with runtime.sessions() as session:
        candidates = session.scalars(select(Candidate).order_by(Candidate.position)).all()
        instances = session.scalars(select(Instance)).all()
        n_tasks = len(session.scalars(select(Task)).all())
    assert [c.generator for c in candidates] == ["diffusion"] * 3
    assert [(c.settings["guidance"], c.settings["steps"]) for c in candidates] == [
        (5.0, 2),
        (7.5, 3),
        (5.0, 2),
    ]
    assert len({c.sha256 for c in candidates}) == 3 and (candidates[0].width, candidates[0].height) == (
        96,
        64,
    )
    assert len(instances) >= 2 and n_tasks == len(instances) + 1  # SAM regions, plus the image task
    assert sum(i.weight for i in instances) == pytest.approx(1.0)

    # Register a LoRA and switch the project to it: the next upload's candidates use it.
    lora = tiny_lora(model, tmp_path / "lora")
    url = f"/api/v1/projects/{project_id}"
    body = {"name": "tuned-1", "base_model": str(model), "lora_path": str(lora)}
    version = client.post(f"{url}/model-versions", json=body, headers=admin)
    assert version.status_code == 201, version.text
    switch = client.put(
        f"{url}/model-version", json={"model_version_id": version.json()["id"]}, headers=admin
    )
    assert switch.status_code == 200, switch.text
    with session_scope(runtime.sessions) as session:
        project = session.get(Project, project_id)
        assert project is not None and project.model_version_id == version.json()["id"]
        assert project.generator_settings["lora"] == str(lora) and project.generator_settings["steps"] == [
            2,
            3,
        ]
        source, _ = add_source(
            session,
            runtime.blobs,
            project,
            png_bytes(24, 16, 9),
            filename="9.png",
            kind="lq",
            max_pixels=10**7,
        )
        session.flush()
        source_id = source.id
    jobs.submit(runtime, [jobs.JobSpec("ingest", {"source_id": source_id}, project_id)])
    assert all(j.state == "succeeded" for j in wait_jobs(runtime, project_id))
    with runtime.sessions() as session:
        tuned = session.scalars(
            select(Candidate).where(Candidate.source_id == source_id).order_by(Candidate.position)
        ).all()
    assert all(c.settings["lora"] == str(lora) for c in tuned)
    assert tuned[0].weights_digest != candidates[0].weights_digest
    # The same LQ image and seed without the LoRA gives other pixels: the LoRA was applied.
    lq = Image.open(io.BytesIO(png_bytes(24, 16, 9)))
    base = get_generator("diffusion", model=str(model), guidance=[5.0], steps=[2]).generate(
        lq, scale=4, n=1, seed=tuned[0].seed
    )[0]
    tuned_pixels = np.asarray(Image.open(io.BytesIO(runtime.blobs.get(tuned[0].sha256))))
    assert not np.array_equal(np.asarray(base.image), tuned_pixels)


def test_scheduled_training_runs_the_trainer_and_registers_its_lora(
    runtime: Runtime, client: TestClient, admin: dict[str, str], tmp_path: Path
) -> None:
    from trainer.tiny import make_tiny_model

    model = make_tiny_model(tmp_path / "upscaler", "upscaler")
    project_id = make_project(runtime, n_sources=1)
    vote_all(runtime, project_id, users(runtime, ["a1", "a2", "a3"]))
    args = {"max_steps": 1, "resolution": 64, "batch_size": 1, "lora_rank": 2, "log_every": 1}
    settings = {"retrain_min_votes": 3, "train_settings": {"model": str(model), "args": args}}
    response = client.put(f"/api/v1/projects/{project_id}/retraining", json=settings, headers=admin)
    assert response.status_code == 200 and response.json()["retrain_min_votes"] == 3

    assert len(retrain_tick(runtime)["datasets"]) == 1
    wait_jobs(runtime, project_id)
    [train_job_id] = retrain_tick(runtime)["training_jobs"]
    [job] = [j for j in wait_jobs(runtime, project_id, timeout=300) if j.id == train_job_id]
    assert job.state == "succeeded", job.error
    assert job.result["evaluation_id"] is None
    assert job.result["evaluation"] == "not evaluated: the project's retrain_evaluate is off"
    log = client.get(f"/api/v1/training-jobs/{train_job_id}/log", headers=admin)
    assert log.status_code == 200 and '"loss":' in log.text  # the metrics the trainer printed
    versions = client.get(f"/api/v1/projects/{project_id}/model-versions", headers=admin).json()
    assert [v["job_id"] for v in versions] == [train_job_id]
    version = versions[0]
    assert Path(version["lora_path"], "pytorch_lora_weights.safetensors").is_file()
    assert version["metrics"] == job.result["metrics"] and version["base_model"] == str(model)
    with runtime.sessions() as session:
        [dataset] = session.scalars(select(Dataset)).all()
    assert version["dataset_id"] == dataset.id
    # DSPO trained on the instance records only, though the dataset has image-level records too.
    records = pq.read_table(records_path(runtime, dataset)).to_pylist()
    train_records = [r for r in records if r["split"] == "train"]
    instances = sum(r["instance_id"] is not None for r in train_records)
    assert instances and len(train_records) > instances, "the dataset should have both kinds"
    trained = json.loads(Path(version["lora_path"], "training_config.json").read_text())
    assert trained["loss"] == "dspo" and trained["records"]["train"] == {"instance": instances, "image": 0}
    assert job.result["records"] == trained["records"]


def test_a_dataset_trains_on_request_with_its_own_flags_and_name(
    runtime: Runtime, client: TestClient, admin: dict[str, str], tmp_path: Path
) -> None:
    """POST /datasets/{id}/train: the project's train_settings with this run's flags over them (here
    image-level DPO instead of DSPO), registered under the name asked for; refused with a reason for
    a project without train_settings, an unknown dataset and a name already taken."""
    from trainer.tiny import make_tiny_model

    model = make_tiny_model(tmp_path / "upscaler", "upscaler")
    project_id = make_project(runtime, n_sources=1)
    vote_all(runtime, project_id, users(runtime, ["a1", "a2", "a3"]))
    body = {"min_votes": 1, "min_agreement": 0.0, "val_fraction": 0.0, "exports": []}
    build = client.post(f"/api/v1/projects/{project_id}/datasets", json=body, headers=admin)
    assert build.status_code == 202, build.text
    wait_jobs(runtime, project_id)
    dataset_id = build.json()["dataset"]["id"]
    request = {"args": {"loss": "dpo"}, "name": "round1-dpo"}

    refused = client.post(f"/api/v1/datasets/{dataset_id}/train", json=request, headers=admin)
    assert refused.status_code == 422 and 'need "model"' in refused.json()["detail"], refused.text
    args = {"max_steps": 1, "resolution": 64, "batch_size": 1, "lora_rank": 2, "log_every": 1}
    settings = {"train_settings": {"model": str(model), "args": args}}
    response = client.put(f"/api/v1/projects/{project_id}/retraining", json=settings, headers=admin)
    assert response.status_code == 200, response.text
    unknown = client.post("/api/v1/datasets/999999/train", json=request, headers=admin)
    assert unknown.status_code == 404, unknown.text

    started = client.post(f"/api/v1/datasets/{dataset_id}/train", json=request, headers=admin)
    assert started.status_code == 202, started.text
    job_id = started.json()["job_id"]
    [job] = [j for j in wait_jobs(runtime, project_id, timeout=300) if j.id == job_id]
    assert job.state == "succeeded", job.error
    assert "evaluation_id" not in job.result  # a requested training starts no round of its own
    [version] = client.get(f"/api/v1/projects/{project_id}/model-versions", headers=admin).json()
    assert (version["id"], version["name"], version["job_id"]) == (
        job.result["model_version_id"],
        "round1-dpo",
        job_id,
    )
    assert version["dataset_id"] == dataset_id and version["base_model"] == str(model)
    trained = json.loads(Path(version["lora_path"], "training_config.json").read_text())
    assert trained["loss"] == "dpo" and trained["max_steps"] == 1
    assert trained["records"]["train"]["instance"] == 0 and trained["records"]["train"]["image"] > 0
    again = client.post(f"/api/v1/datasets/{dataset_id}/train", json=request, headers=admin)
    assert again.status_code == 409 and "round1-dpo" in again.json()["detail"], again.text

    # The same from the datasets page: a Train form on each published version.
    token = admin["Authorization"].removeprefix("Bearer ")
    client.cookies.set(SESSION_COOKIE, token)
    page = client.get(f"/admin/projects/{project_id}/datasets")
    assert f'action="/admin/datasets/{dataset_id}/train"' in page.text
    form = {"csrf_token": csrf_token_for(runtime, token), "loss": "sft", "name": "from-the-page"}
    sent = client.post(f"/admin/datasets/{dataset_id}/train", data=form, follow_redirects=False)
    assert sent.status_code == 303 and sent.headers["location"] == f"/admin/jobs?project_id={project_id}"
    refused = client.post(f"/admin/datasets/{dataset_id}/train", data=form)  # while that job runs
    assert refused.status_code == 409 and "from-the-page" in refused.text
    client.cookies.clear()
    assert all(j.state == "succeeded" for j in wait_jobs(runtime, project_id, timeout=300))
    versions = client.get(f"/api/v1/projects/{project_id}/model-versions", headers=admin).json()
    assert [v["name"] for v in versions] == ["round1-dpo", "from-the-page"]
    assert json.loads(Path(versions[1]["lora_path"], "training_config.json").read_text())["loss"] == "sft"
