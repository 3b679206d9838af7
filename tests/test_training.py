"""Seed data, loss masks on the real processor, and training through transformers' Trainer
(DeepSpeed ZeRO-2 on CPU) with the tiny LLaVA-architecture model."""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from corpus import held_command, hold_env, wait_until_held, write_seed_sources

from adamllm_core.dataset import Dataset
from adamllm_core.engines.hf import HFRenderer
from adamllm_core.prompts import SYNTH_PRECISE_HINT
from adamllm_core.training.encoding import (
    IGNORE_INDEX,
    conversation_segments,
    encode_segments,
    synthesizer_segments,
)
from adamllm_core.training.trainer import RUN_IDENTITY

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "samples" / "biomed_pairs"


def encode_all(uri: str, renderer, config) -> list:
    """Every record of a training dataset encoded as the trainer encodes each one."""
    from adamllm_core.pipeline import conversation_rows
    from adamllm_core.training.trainer import encode_row

    return [encode_row(row, renderer, config) for row in conversation_rows(uri)]


def tiny_synthesizer(rate: float, max_steps: int):
    """Synthesizer tuning of the tiny model: batches of 2, a checkpoint every 2 steps."""
    from adamllm_core.training.trainer import preset

    return preset(
        "tiny",
        task="synthesizer",
        learning_rate=rate,
        max_steps=max_steps,
        save_steps=2,
        global_batch_size=2,
        per_device_batch_size=2,
    )


def test_seed_join_blank_images_and_dev_split(seed_dataset: str) -> None:
    dataset = Dataset(seed_dataset)
    rows = list(dataset.iter_rows())
    assert len(rows) == 22 and dataset.manifest.quarantine.reasons == {
        "missing_caption": 1,
        "ambiguous_caption": 1,
    }
    counters = dataset.manifest.stats.counters
    assert counters["caption_without_image"] == 1 and counters["informative_unmatched"] == 1
    assert "caption_unmatched" not in counters  # the second folder's record names record 7
    # joined on the image: each row's answers are those of its own image
    lines = [json.loads(line) for line in (SAMPLE / "data.jsonl").read_text().splitlines()]
    for row in rows:
        i = int(row["source_ref"].rsplit("_", 1)[1])
        assert row["caption"] == lines[i]["caption"].strip()
        assert row["informative"].endswith(f"the answer is {row['precise']}.")
        assert row["task"] == f"MedPix+{['modality_recognition', 'plane_recognition'][i % 2]}"
    blanks = [r for r in rows if r["blank_image"]]
    assert 0 < len(blanks) < len(rows) and dataset.manifest.stats.counters["blank_images"] == len(
        blanks
    )
    import io

    from PIL import Image

    assert Image.open(io.BytesIO(blanks[0]["image"])).getextrema() == ((255, 255),) * 3
    for task in ("MedPix+modality_recognition", "MedPix+plane_recognition"):
        splits = [r["split"] for r in rows if r["task"] == task]
        # a quarter of the task's 12 records, drawn before two of them are quarantined
        assert splits.count("dev") == 3
    assert all(r["precise"] and r["informative"].endswith(".") for r in rows)


def test_seed_command_builds_the_seed_from_the_three_release_files(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from adamllm_cli.main import app

    paths = write_seed_sources(tmp_path)
    out = tmp_path / "seed"
    arguments = ["seed", "--vision-flan", paths["vision_flan"]]
    arguments += ["--allava-caption", paths["allava_caption"]]
    arguments += ["--allava-instruct", paths["allava_instruct"]]
    arguments += ["--image-root", str(tmp_path / "images_191task_1k"), "--out", str(out)]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert "seed 22 examples" in result.output
    for line in ("missing_caption: 1", "ambiguous_caption: 1", "informative_unmatched: 1"):
        assert line in result.output
    assert Dataset(str(out)).manifest.rows == 22


def test_synthesizer_tuning_holds_out_the_dev_split_for_its_validation_loss(
    tiny_models, seed_dataset: str, tmp_path: Path
) -> None:
    from adamllm_core.training.trainer import preset, train_to

    rows = list(Dataset(seed_dataset).iter_rows(["split"]))
    dev = sum(row["split"] == "dev" for row in rows)
    config = preset(
        "tiny",
        task="synthesizer",
        max_steps=4,
        save_steps=2,
        global_batch_size=2,
        per_device_batch_size=2,
    )
    out = tmp_path / "run"
    summary = train_to(config, seed_dataset, str(out))
    assert 0 < dev < len(rows)
    assert summary["examples"] == len(rows) - dev and summary["validation_examples"] == dev
    points = [
        json.loads(line) for line in (out / "validation_metrics.jsonl").read_text().splitlines()
    ]
    assert [p["step"] for p in points][:2] == [2, 4]
    assert summary["validation_loss"] == pytest.approx(points[-1]["validation_loss"])


def test_synthesizer_loss_mask_token_by_token(tiny_models) -> None:
    renderer = HFRenderer(tiny_models["vlm"])
    segments = synthesizer_segments(
        renderer, "Axial CT of the liver.", "What organ?", "Liver", "It is the liver."
    )
    encoded = encode_segments(
        renderer, segments, (SAMPLE / "images").glob("*.png").__next__().read_bytes()
    )
    tokens = renderer.tokenizer.convert_ids_to_tokens(encoded.input_ids)
    trained = [t for t, label in zip(tokens, encoded.labels) if label != IGNORE_INDEX]
    masked = [t for t, label in zip(tokens, encoded.labels) if label == IGNORE_INDEX]
    image_tokens = tokens.count("<image>")
    assert image_tokens > 1 and "<image>" not in trained  # expanded by the processor, never trained
    decoded_trained = renderer.tokenizer.convert_tokens_to_string(trained)
    decoded_masked = renderer.tokenizer.convert_tokens_to_string(masked)
    assert (
        "Axial CT of the liver." in decoded_masked and "Axial CT" not in decoded_trained
    )  # caption round masked
    assert decoded_masked.endswith(SYNTH_PRECISE_HINT)  # the prompt at synthesis time ends here
    assert decoded_trained == (
        "\nWhat organ?<|im_end|>\n<|im_start|>assistant\nLiver<|im_end|>\n<|im_start|>user\n"
        "Answer with an informative response.\nWhat organ?<|im_end|>\n<|im_start|>assistant\n"
        "It is the liver.<|im_end|>\n<|endoftext|>"
    )
    labels_are_ids = all(
        label in (IGNORE_INDEX, token) for label, token in zip(encoded.labels, encoded.input_ids)
    )
    first_trained = next(i for i, label in enumerate(encoded.labels) if label != IGNORE_INDEX)
    assert labels_are_ids and first_trained == len(
        masked
    )  # one masked prefix, then the trained rest


def test_post_training_loss_only_on_assistant_turns(tiny_models) -> None:
    renderer = HFRenderer(tiny_models["vlm"])
    turns = [
        {"role": "user", "content": "<image>Describe the image."},
        {"role": "assistant", "content": "A CT."},
        {"role": "user", "content": "Which organ?"},
        {"role": "assistant", "content": "The liver."},
    ]
    segments = conversation_segments(renderer, turns)
    assert [t for t, trained in segments if trained] == [
        "A CT.<|im_end|>\n",
        "The liver.<|im_end|>\n",
    ]
    encoded = encode_segments(
        renderer, segments, (SAMPLE / "images").glob("*.png").__next__().read_bytes()
    )
    trained = renderer.tokenizer.decode(
        [i for i, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE_INDEX]
    )
    assert trained == "A CT.<|im_end|>\nThe liver.<|im_end|>\n"


def test_text_conversation_on_a_text_lm_trains_only_replies(tiny_models) -> None:
    """An instruction-tuning row (`text_chats`, no image) through the post-training mask."""
    renderer = HFRenderer(tiny_models["lm"])
    turns = [
        {"role": "user", "content": "A red circle. What colour is the circle?"},
        {"role": "assistant", "content": "red."},
        {"role": "user", "content": "How many objects are there?"},
        {"role": "assistant", "content": "one."},
    ]
    encoded = encode_segments(renderer, conversation_segments(renderer, turns), None)
    trained = renderer.tokenizer.decode(
        [i for i, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE_INDEX]
    )
    assert trained == "red.<|im_end|>\none.<|im_end|>\n"
    assert encoded.pixel_values is None


def test_world_text_corpus_trains_replies_or_all_after_the_caption(tiny_models, tmp_path) -> None:
    """The proving ground's LLM text (`text_chats`) through `encode_dataset`: replies only by
    default; with `loss_on: after_opening` the opening request and its caption (or a copy
    drill's first list) are context (masked) and every later token, questions included, is
    trained."""
    from adamllm_core.pipeline import CAPTION_PROMPTS
    from adamllm_core.proving.bundles import write_text_corpus
    from adamllm_core.proving.world import (
        BRIEF_INSTRUCTIONS,
        COPY_DRILL_PROMPTS,
        LONG_INSTRUCTIONS,
        WorldConfig,
    )
    from adamllm_core.training.trainer import load_train_config

    uri = str(tmp_path / "text")
    write_text_corpus(uri, 0, WorldConfig(), 4)
    renderer = HFRenderer(tiny_models["lm"])
    rows = list(Dataset(uri).iter_rows())
    assert sorted(row["task"] for row in rows) == ["copy"] * 2 + ["reading"] * 4
    replies = encode_all(uri, renderer, load_train_config({"model": tiny_models["lm"]}))
    after = encode_all(
        uri, renderer, load_train_config({"model": tiny_models["lm"], "loss_on": "after_opening"})
    )

    def trained(encoded) -> str:
        ids = [i for i, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE_INDEX]
        return renderer.tokenizer.decode(ids)

    for row, reply, context in zip(rows, replies, after, strict=True):
        turns = row["messages"]
        if row["task"] == "copy":  # a list of words, then the same list again
            assert turns[0]["content"] == COPY_DRILL_PROMPTS[0] and len(turns) == 4
            assert turns[1]["content"] == turns[3]["content"]
        else:
            assert turns[0]["content"] in CAPTION_PROMPTS and len(turns) == 8
            # each question says how long its answer is: one word, or the facts first
            for asked, answer in zip(turns[2::2], turns[3::2], strict=True):
                instruction, _, question = asked["content"].partition("\n")
                assert question.endswith("?")
                brief = len(answer["content"].split()) == 1
                assert instruction in (BRIEF_INSTRUCTIONS if brief else LONG_INSTRUCTIONS)
        answers = [t["content"] for t in turns if t["role"] == "assistant"]
        assert trained(reply) == "".join(f"{a}<|im_end|>\n" for a in answers)
        later = "".join(f"<|im_start|>{t['role']}\n{t['content']}<|im_end|>\n" for t in turns[2:])
        assert trained(context) == later
        assert context.input_ids == reply.input_ids


def test_caption_replies_trains_only_the_caption_turn_in_either_order(
    tiny_models, tmp_path
) -> None:
    """`loss_on: caption_replies` (the proving ground's masked-synthetic mutation): in a
    single-stage conversation only the reply to the caption request is trained, whether the
    caption comes first or second; the synthetic turn stays in the context. The caption
    request is the record's own (not one of the pool's): the record's kind says which
    round is the caption."""
    from adamllm_core.proving.bundles import commit_rows, dataset_writer
    from adamllm_core.schemas import CONVERSATIONS, ChatTurn, Conversation
    from adamllm_core.training.trainer import load_train_config

    image = next((SAMPLE / "images").glob("*.png")).read_bytes()
    caption = [
        ChatTurn(role="user", content="Generate a report for this scan."),
        ChatTurn(role="assistant", content="A CT of the chest."),
    ]
    task = [
        ChatTurn(role="user", content="Which organ?"),
        ChatTurn(role="assistant", content="The lung."),
    ]
    rows = []
    for kind, turns in (("caption+task", caption + task), ("task+caption", task + caption)):
        turns[0] = turns[0].model_copy(update={"content": "<image>" + turns[0].content})
        rows.append(
            Conversation(
                id=kind,
                pair_id=kind,
                triplet_id=None,
                domain="test",
                variant="single_stage",
                kind=kind,
                image=image,
                image_format="png",
                messages=turns,
                tokens=0,
            )
        )
    uri = str(tmp_path / "mixture")
    commit_rows(dataset_writer(uri, CONVERSATIONS, "test", {}), CONVERSATIONS, rows)
    renderer = HFRenderer(tiny_models["vlm"])
    config = load_train_config({"model": tiny_models["vlm"], "loss_on": "caption_replies"})
    masked = encode_all(uri, renderer, config)
    replies = encode_all(uri, renderer, load_train_config({"model": tiny_models["vlm"]}))

    def trained(encoded) -> str:
        ids = [i for i, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE_INDEX]
        return renderer.tokenizer.decode(ids)

    assert [trained(e) for e in masked] == ["A CT of the chest.<|im_end|>\n"] * 2
    assert [trained(e) for e in replies] == [
        "A CT of the chest.<|im_end|>\nThe lung.<|im_end|>\n",
        "The lung.<|im_end|>\nA CT of the chest.<|im_end|>\n",
    ]
    # the synthetic turn is still in the input, only its loss is off
    assert [e.input_ids for e in masked] == [e.input_ids for e in replies]


def test_vision_mode_freezes_exactly_the_language_model(tiny_models) -> None:
    from transformers import AutoModelForImageTextToText

    from adamllm_core.training.trainer import _freeze_for

    model = AutoModelForImageTextToText.from_pretrained(tiny_models["vlm"])
    _freeze_for(model, "vision")
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert frozen and all("language_model" in n or "lm_head" in n for n in frozen)
    assert any("vision_tower" in n for n in trained)
    assert any("multi_modal_projector" in n for n in trained)
    assert not any("language_model" in n for n in trained)


def train_command(config: dict, data: str, out: Path | str, config_file: Path) -> list[str]:
    """`adamllm train`'s module and arguments, its config written to `config_file`."""
    config_file.write_text(yaml.safe_dump(config))
    return [
        "adamllm_cli.main",
        "train",
        "--config",
        str(config_file),
        "--data",
        data,
        "--out",
        str(out),
    ]


def train_cli(
    config: dict,
    data: str,
    out: Path | str,
    env_extra: dict | None = None,
    config_dir: Path | None = None,
    hold: tuple[str, Path] | None = None,
) -> subprocess.Popen:
    """`adamllm train` in a process of its own; `hold`: (hold, folder), the run waits there
    (corpus.held_command) to be killed."""
    config_file = (config_dir or Path(out).parent) / f"{Path(str(out)).name}.yaml"
    env = {**os.environ, **(env_extra or {}), **(hold_env(*hold) if hold else {})}
    command = train_command(config, data, out, config_file)
    return subprocess.Popen(
        held_command(*command) if hold else [sys.executable, "-m", *command],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


@pytest.mark.slow
def test_zero2_training_lowers_loss_and_the_model_reloads(
    tiny_models, seed_dataset: str, tmp_path: Path
) -> None:
    out = tmp_path / "zero2"
    env = {
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        # One rank: its own store alone listens, so port 0 lets the kernel pick a free one as
        # it binds (a fixed port collides with any other run on this machine using it).
        "MASTER_PORT": "0",
        # A build killed earlier left torch's lock file beside DeepSpeed's CPU comm op: the run
        # must neither wait on it forever (it did, in CI) nor build the op at all.
        "TORCH_EXTENSIONS_DIR": str(tmp_path / "extensions"),
    }
    stale_lock = tmp_path / "extensions" / "deepspeed_shm_comm" / "lock"
    stale_lock.parent.mkdir(parents=True)
    stale_lock.touch()
    process = train_cli(
        {
            "preset": "tiny",
            "task": "synthesizer",
            "max_steps": 24,
            "deepspeed": "zero2",
            "global_batch_size": 4,
            "per_device_batch_size": 4,
        },
        seed_dataset,
        out,
        env,
    )
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output.decode()[-3000:]
    assert sorted(p.name for p in stale_lock.parent.iterdir()) == ["lock"]  # nothing built
    assert (out / "checkpoint-24" / "global_step24").is_dir()  # a DeepSpeed checkpoint
    # Progress: one line per log with the step of the total and the time left, no raw dicts.
    printed = output.decode()
    progress = re.findall(r"step (\d+)/24 \(\d+%\) · loss [\d.]+ · .*", printed)
    assert progress and progress[-1] == "24", printed[-3000:]
    assert re.search(r"step \d+/24 .* about \d+ (s|min) left", printed)
    assert "{'loss'" not in printed
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["loss"] < metrics[0]["loss"] - 0.5 and metrics[-1]["tokens_per_s"] > 0
    assert (out / "loss_curve.png").stat().st_size > 1000
    summary = json.loads((out / "train_summary.json").read_text())
    assert 0 <= summary["padding_fraction"] < 0.5

    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(out / "final")
    processor = AutoProcessor.from_pretrained(out / "final")
    from PIL import Image

    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]}],
        tokenize=False,
        add_generation_prompt=True,
    )
    inputs = processor(text=[text], images=[Image.new("RGB", (20, 20))], return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert generated.shape[1] > inputs["input_ids"].shape[1]


# How torch's store reports that rank 0 could not listen on the master port
PORT_TAKEN = re.compile(r"EADDRINUSE|[Aa]ddress already in use")


def two_rank_training(
    config: dict,
    data: str,
    out: str,
    tmp_path: Path,
    hold: tuple[str, Path] | None = None,
    tries: int = 3,
) -> subprocess.Popen:
    """`adamllm train` as two CPU ranks under the `deepspeed` launcher (the multi-GPU path,
    gloo instead of NCCL), in a process group of its own; its output goes to a file (a
    pipe nobody reads while it runs could fill and stall it), `.log` on the process.

    Both ranks must be told the master port before rank 0 listens on it, so it is picked
    free beforehand and can be taken meanwhile: a run that fails because rank 0 found it
    taken is started again on another (`tries` in all). Without `hold` this waits for the
    run to end; with (hold, folder), until rank 0 waits at the hold (corpus.held_command)."""
    import socket

    launcher = Path(sys.executable).parent / "deepspeed"
    env = {**os.environ, **(hold_env(*hold) if hold else {})}
    logs = []
    for _ in range(tries):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        log = tmp_path / f"two-ranks-{port}.log"
        command = train_command(config, data, out, tmp_path / f"two-ranks-{port}.yaml")
        with open(log, "w") as sink:
            process = subprocess.Popen(
                [
                    str(launcher),
                    "--num_gpus",
                    "2",
                    "--master_addr",
                    "127.0.0.1",
                    "--master_port",
                    str(port),
                    "--module",
                    *(["corpus", *command] if hold else command),  # see held_command
                ],
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
        process.log = log  # type: ignore[attr-defined]
        logs.append(log)
        if hold is None:
            process.wait(timeout=600)
        else:
            try:
                wait_until_held(process, hold[1], lambda log=log: log.read_text()[-3000:])
            except AssertionError:
                if process.poll() is None or not PORT_TAKEN.search(log.read_text()):
                    raise
        if process.poll() in (None, 0) or not PORT_TAKEN.search(log.read_text()):
            return process
        with contextlib.suppress(ProcessLookupError):  # whatever of the failed run is left
            os.killpg(process.pid, signal.SIGKILL)
    tails = "\n".join(f"{log.name}: {log.read_text()[-500:]}" for log in logs)
    pytest.fail(f"the master port picked was taken {tries} times in a row:\n{tails}")


@pytest.mark.slow
def test_deepspeed_launcher_two_ranks_zero3(tiny_models, seed_dataset: str, tmp_path: Path) -> None:
    """Two CPU processes under the `deepspeed` launcher (the multi-GPU path, gloo instead of NCCL)."""
    from safetensors.torch import load_file

    from adamllm_core.models import resolve_model

    out = tmp_path / "two-ranks"
    config = {
        "preset": "tiny",
        "task": "synthesizer",
        "max_steps": 4,
        "deepspeed": "zero3",
        "global_batch_size": 4,
        "per_device_batch_size": 2,
    }
    shared_buffers = set(Path("/dev/shm").glob("deepspeed_allreduce_buffer_*"))
    process = two_rank_training(config, seed_dataset, str(out), tmp_path)
    assert process.returncode == 0, process.log.read_text()[-3000:]
    # DeepSpeed's CPU shared-memory allreduce left two 66 MB buffers in /dev/shm per run
    assert set(Path("/dev/shm").glob("deepspeed_allreduce_buffer_*")) == shared_buffers
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 4
    # per rank 2 examples, no accumulation: an epoch is examples / 4 steps, the examples
    # counted with the rows repeated to give both ranks equal full batches
    assert summary["steps_per_epoch"] == -(
        -(summary["examples"] + summary["repeated_for_balance"]) // 4
    )
    assert summary["repeated_for_balance"] < 2 * (64 + 2)
    # ZeRO-3 partitions every weight across ranks; the saved model must hold them whole
    initial = load_file(Path(resolve_model("tiny:vlm")) / "model.safetensors")
    final = load_file(out / "final" / "model.safetensors")
    assert final.keys() == initial.keys()
    assert all(final[k].shape == initial[k].shape for k in initial)
    assert any(not torch.equal(final[k], initial[k]) for k in initial)


@pytest.mark.slow
def test_killed_training_resumes_to_the_same_weights(
    tiny_models, seed_dataset: str, tmp_path: Path
) -> None:
    config = {
        "preset": "tiny",
        "task": "synthesizer",
        "max_steps": 30,
        "save_steps": 5,
        "global_batch_size": 2,
        "per_device_batch_size": 2,
        "save_total_limit": 10,
    }
    reference = train_cli(config, seed_dataset, tmp_path / "reference")
    assert reference.wait(timeout=600) == 0

    out = tmp_path / "killed"
    # Held, not polled (a poll-then-kill races the run's end): killed once checkpoint-10 is
    # saved but not yet marked complete (the run-identity file, written last), so the resume
    # must take checkpoint-5, the latest complete one, and pass over the cut-short one.
    hold = tmp_path / "hold"
    process = train_cli(config, seed_dataset, out, hold=("checkpoint-unmarked:10", hold))
    wait_until_held(process, hold, lambda: process.stdout.read().decode()[-2000:])
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "final").exists()
    assert (out / "checkpoint-5" / RUN_IDENTITY).exists()
    assert (out / "checkpoint-10").is_dir() and not (out / "checkpoint-10" / RUN_IDENTITY).exists()

    resumed = train_cli(config, seed_dataset, out)
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output.decode()[-3000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["resumed_from"] == "checkpoint-5" and summary["steps"] == 30

    from safetensors.torch import load_file

    a = load_file(tmp_path / "reference" / "final" / "model.safetensors")
    b = load_file(out / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)


@pytest.mark.integration
def test_training_output_on_object_storage(
    tiny_models, seed_dataset: str, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import s3fs

    from adamllm_core.training.trainer import preset, train_to

    monkeypatch.setenv("ADAMLLM_TRAIN_STAGING", str(tmp_path / "staging"))
    config = preset(
        "tiny",
        task="synthesizer",
        max_steps=6,
        save_steps=3,
        global_batch_size=2,
        per_device_batch_size=2,
    )
    out = f"{s3_bucket}/runs/synthesizer"
    summary = train_to(config, seed_dataset, out)
    fs = s3fs.S3FileSystem(endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    keys = {k.split("/synthesizer/", 1)[1] for k in fs.find(out.removeprefix("s3://"))}
    for expected in (
        "metrics.jsonl",
        "loss_curve.png",
        "train_summary.json",
        "final/model.safetensors",
        "checkpoint-3/trainer_state.json",
        "checkpoint-6/trainer_state.json",
    ):
        assert expected in keys, expected
    assert json.loads(fs.cat_file(f"{out}/train_summary.json"))["identity"] == summary["identity"]
    assert fs.cat_file(f"{out}/checkpoint-6/run_identity").decode() == summary["identity"]
    # a finished identical run is not trained again, even from a new machine's empty staging area
    monkeypatch.setenv("ADAMLLM_TRAIN_STAGING", str(tmp_path / "elsewhere"))
    assert train_to(config, seed_dataset, out) == summary and not (tmp_path / "elsewhere").exists()
    # killed after step 3's checkpoint (no later one, no summary, no final/): another
    # machine resumes from the latest checkpoint in the bucket, its counts carried over
    for gone in ("train_summary.json", "final", "checkpoint-6"):
        fs.rm(f"{out}/{gone}", recursive=True)
    monkeypatch.setenv("ADAMLLM_TRAIN_STAGING", str(tmp_path / "third"))
    resumed = train_to(config, seed_dataset, out)
    assert resumed["resumed_from"] == "checkpoint-3" and resumed["steps"] == 6
    assert resumed["trained_tokens"] == summary["trained_tokens"]
    assert fs.exists(f"{out}/final/model.safetensors") and fs.exists(f"{out}/train_summary.json")


@pytest.mark.integration
@pytest.mark.slow
def test_a_killed_two_rank_run_resumes_from_object_storage(
    tiny_models, seed_dataset: str, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two ranks (ZeRO-2: each rank holds its own optimizer partition) train into the
    bucket and are killed after a checkpoint is marked complete there; a fresh node (an
    empty staging folder) resumes from the bucket to the end."""
    import s3fs

    # no listings cache: the bucket is polled while the ranks write to it
    fs = s3fs.S3FileSystem(endpoint_url=os.environ["AWS_ENDPOINT_URL"], use_listings_cache=False)
    out = f"{s3_bucket}/runs/two-ranks"
    config = {
        "preset": "tiny",
        "task": "synthesizer",
        "max_steps": 20,
        "save_steps": 2,
        "save_total_limit": 10,
        "deepspeed": "zero2",
        "global_batch_size": 4,
        "per_device_batch_size": 2,
    }
    monkeypatch.setenv("ADAMLLM_TRAIN_STAGING", str(tmp_path / "node-a"))
    # Held, not polled (a poll-then-kill races the run's end): rank 0 waits once
    # checkpoint-2 is marked complete in the bucket, and the whole group is killed there.
    hold = tmp_path / "hold"
    process = two_rank_training(
        config, seed_dataset, out, tmp_path, hold=("checkpoint-complete:2", hold)
    )
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not fs.exists(f"{out}/train_summary.json")
    marked = [p.rsplit("/", 2)[-2] for p in fs.glob(f"{out}/checkpoint-*/{RUN_IDENTITY}")]
    assert marked == ["checkpoint-2"]
    for name in marked:  # a checkpoint marked complete holds both ranks' partitions
        files = fs.find(f"{out}/{name}")
        assert [f for f in files if "zero_pp_rank_0" in f and "optim_states" in f]
        assert [f for f in files if "zero_pp_rank_1" in f and "optim_states" in f]

    monkeypatch.setenv("ADAMLLM_TRAIN_STAGING", str(tmp_path / "node-b"))
    resumed = two_rank_training(config, seed_dataset, out, tmp_path)
    assert resumed.returncode == 0, resumed.log.read_text()[-3000:]
    summary = json.loads(fs.cat_file(f"{out}/train_summary.json"))
    latest = max(marked, key=lambda name: int(name.split("-")[1]))
    assert summary["world_size"] == 2 and summary["steps"] == 20
    assert summary["resumed_from"] == latest
    assert fs.exists(f"{out}/final/model.safetensors")


def test_a_checkpoint_of_another_run_is_refused(
    tiny_models, seed_dataset: str, tmp_path: Path
) -> None:
    import shutil

    from adamllm_core.training.trainer import train_to

    def config(rate: float):
        return tiny_synthesizer(rate, max_steps=2)

    train_to(config(1e-3), seed_dataset, str(tmp_path / "a"))
    train_to(config(2e-3), seed_dataset, str(tmp_path / "b"))
    # b's folder is b's run, but its checkpoint came from a (copied over by hand)
    shutil.rmtree(tmp_path / "b" / "checkpoint-2")
    shutil.copytree(tmp_path / "a" / "checkpoint-2", tmp_path / "b" / "checkpoint-2")
    (tmp_path / "b" / "train_summary.json").unlink()
    with pytest.raises(ValueError, match="checkpoint-2 was made by run .* not by this run"):
        train_to(config(2e-3), seed_dataset, str(tmp_path / "b"))


@pytest.mark.integration
def test_train_command_writes_to_object_storage(
    tiny_models, seed_dataset: str, s3_bucket: str, tmp_path: Path
) -> None:
    import s3fs

    out = f"{s3_bucket}/runs/cli"
    config = {
        "preset": "tiny",
        "task": "synthesizer",
        "max_steps": 2,
        "global_batch_size": 2,
        "per_device_batch_size": 2,
    }
    env = {"ADAMLLM_TRAIN_STAGING": str(tmp_path / "staging")}
    first = train_cli(config, seed_dataset, out, env, config_dir=tmp_path)
    output, _ = first.communicate(timeout=600)
    assert first.returncode == 0, output.decode()[-3000:]
    fs = s3fs.S3FileSystem(endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    summary = json.loads(fs.cat_file(f"{out}/train_summary.json"))
    assert summary["steps"] == 2 and fs.exists(f"{out}/final/model.safetensors")


def test_a_changed_run_does_not_resume_from_the_old_runs_checkpoints(
    tiny_models, seed_dataset: str, tmp_path: Path
) -> None:
    """Training into a folder that holds another run's checkpoints (other settings, data or
    code) starts from the model, not from the stale checkpoint, and gives the weights a fresh
    run gives."""
    from safetensors.torch import load_file

    from adamllm_core.training.trainer import train_to

    def config(rate: float):
        return tiny_synthesizer(rate, max_steps=4)

    out = tmp_path / "run"
    first = train_to(config(1e-3), seed_dataset, str(out))
    assert (out / "checkpoint-4" / "trainer_state.json").exists()
    (out / "train_summary.json").unlink()  # as if the first run had been killed after step 4
    changed = train_to(config(5e-3), seed_dataset, str(out))
    assert changed["identity"] != first["identity"]
    assert changed["resumed_from"] is None and changed["steps"] == 4
    train_to(config(5e-3), seed_dataset, str(tmp_path / "fresh"))
    a = load_file(out / "final" / "model.safetensors")
    b = load_file(tmp_path / "fresh" / "final" / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)


def write_mixture(uri: str, replies: list[str], images: list[bytes]) -> None:
    """A conversations dataset with images inline and `tokens` 0 (as if counted short)."""
    from adamllm_core.proving.bundles import commit_rows, dataset_writer
    from adamllm_core.schemas import CONVERSATIONS, ChatTurn, Conversation

    rows = [
        Conversation(
            id=f"row-{i}",
            pair_id=f"pair-{i}",
            triplet_id=None,
            domain="test",
            variant="caption_only",
            kind="caption",
            image=image,
            image_format="png",
            messages=[
                ChatTurn(role="user", content="<image>Describe the image."),
                ChatTurn(role="assistant", content=reply),
            ],
            tokens=0,
        )
        for i, (reply, image) in enumerate(zip(replies, images, strict=True))
    ]
    commit_rows(dataset_writer(uri, CONVERSATIONS, "test", {}), CONVERSATIONS, rows)


def test_records_the_processor_refuses_are_skipped_with_their_ids(
    tiny_models, tmp_path: Path
) -> None:
    """An unreadable image and a record longer than max_seq_len (its `tokens` said short)
    are found while training, in DataLoader worker processes: each is counted with its id
    and replaced by another row; every other row is trained."""
    from adamllm_core.training.trainer import encode_row, load_train_config, preset, train_to

    images = sorted((SAMPLE / "images").glob("*.png"))[:8]
    replies = [f"A scan, case {i}." for i in range(8)]
    pictures = [path.read_bytes() for path in images]
    replies[5] = " ".join(["lesion"] * 400)
    pictures[2] = b"not an image"
    uri = str(tmp_path / "mixture")
    write_mixture(uri, replies, pictures)
    renderer = HFRenderer(tiny_models["vlm"])
    model = load_train_config({"model": tiny_models["vlm"]})
    good = [
        encode_row(
            {
                "messages": [
                    {"role": "user", "content": "<image>Describe the image."},
                    {"role": "assistant", "content": reply},
                ],
                "image": pictures[i],
            },
            renderer,
            model,
        )
        for i, reply in enumerate(replies)
        if i not in (2, 5)
    ]
    fits = max(len(encoded.input_ids) for encoded in good)
    config = preset(
        "tiny",
        task="post_train",
        epochs=1,
        global_batch_size=2,
        per_device_batch_size=2,
        max_seq_len=fits + 8,
        dataloader_workers=2,
    )
    summary = train_to(config, uri, str(tmp_path / "run"))
    assert summary["refused"] == 2 and summary["refused_ids"] == ["row-2", "row-5"]
    assert summary["refused_by_reason"] == {"processor_error": 1, "too_long": 1}
    assert summary["examples"] == 8 and summary["steps"] == 4
    # the six good rows are trained once each, and two of them once more in place of the
    # refused ones
    tokens = sorted(encoded.trained_tokens for encoded in good)
    assert sum(tokens) + 2 * tokens[0] <= summary["trained_tokens"] <= sum(tokens) + 2 * tokens[-1]


def test_gradient_checkpointing_trains_the_same_steps(tiny_models, tmp_path: Path) -> None:
    from adamllm_core.training.trainer import preset, train_to

    images = [path.read_bytes() for path in sorted((SAMPLE / "images").glob("*.png"))[:8]]
    uri = str(tmp_path / "mixture")
    write_mixture(uri, [f"A scan, case {i}." for i in range(8)], images)
    runs = {}
    for checkpointing in (False, True):
        config = preset(
            "tiny",
            task="post_train",
            max_steps=3,
            global_batch_size=4,
            per_device_batch_size=4,
            gradient_checkpointing=checkpointing,
        )
        out = tmp_path / f"run-{checkpointing}"
        runs[checkpointing] = train_to(config, uri, str(out))
        runs[checkpointing]["losses"] = [
            json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
        ]
    assert runs[True]["gradient_checkpointing"] and not runs[False]["gradient_checkpointing"]
    assert len(runs[True]["losses"]) == 3
    assert runs[True]["losses"] == pytest.approx(runs[False]["losses"], rel=1e-4)


def test_collator_pads_per_token_processor_outputs_and_stacks_per_image_ones() -> None:
    # Qwen2-VL's processor returns mm_token_type_ids (1, tokens), which its M-RoPE needs
    # for the whole padded batch, beside image_grid_thw (1 row per image).
    import torch

    from adamllm_core.training.trainer import Collator

    def item(types: list[int], grid: list[int]) -> dict:
        return {
            "input_ids": list(range(10, 10 + len(types))),
            "labels": [-100] * len(types),
            "pixel_values": torch.ones(4, 3),
            "mm_token_type_ids": torch.tensor([types]),
            "image_grid_thw": torch.tensor([grid]),
        }

    batch = Collator(0)([item([0, 1, 1, 0, 0], [1, 2, 2]), item([1, 1, 0], [1, 4, 4])])
    assert batch["mm_token_type_ids"].tolist() == [[0, 1, 1, 0, 0], [1, 1, 0, 0, 0]]
    assert batch["image_grid_thw"].tolist() == [[1, 2, 2], [1, 4, 4]]
    assert batch["pixel_values"].shape == (8, 3)
    assert batch["attention_mask"].tolist() == [[1] * 5, [1, 1, 1, 0, 0]]
