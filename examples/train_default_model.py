"""Train the embedded default model (a few-MB Llama) from the Wikipedia text shipped in the repo.

Run with `make train-example`. Everything is seeded and sized by step count (not wall time), so a
rerun on the same torch build gives the same model. It writes:

- examples/tiny-llama/          HF checkpoint: config, bf16 safetensors, tokenizer with chat template
- examples/data/calibration.jsonl   128 training paragraphs as {"text": ...} lines
- examples/data/eval.txt            held-out articles (never trained on) for perplexity
- examples/tiny-llama-training.json  figures of this run (perplexity vs. a unigram baseline)
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
import zlib
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

sys.path.insert(0, str(Path(__file__).parent))
import wikitext

HERE = Path(__file__).parent
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}</s>\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]


def split_corpus() -> tuple[list[str], list[str]]:
    """Hold out about one article in twelve (chosen by a hash of its title) for evaluation."""
    train, held_out = [], []
    for article in wikitext.articles():
        bucket = zlib.crc32(article.title.encode()) % 12
        (held_out if bucket == 0 else train).append(article.text)
    return train, held_out


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=512,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def encode(tokenizer: PreTrainedTokenizerFast, texts: list[str]) -> torch.Tensor:
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text)["input_ids"])
        ids.append(tokenizer.eos_token_id)
    return torch.tensor(ids, dtype=torch.long)


def unigram_perplexity(train_ids: torch.Tensor, eval_ids: torch.Tensor, vocab: int) -> float:
    counts = torch.bincount(train_ids, minlength=vocab).double() + 1.0
    logp = torch.log(counts / counts.sum())
    return math.exp(-logp[eval_ids].mean().item())


@torch.no_grad()
def perplexity(model: LlamaForCausalLM, ids: torch.Tensor, seq_len: int) -> float:
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(ids) - seq_len, seq_len):
        window = ids[start : start + seq_len + 1].unsqueeze(0)
        out = model(window[:, :-1], labels=window[:, :-1])
        total += out.loss.item() * (seq_len - 1)
        count += seq_len - 1
    model.train()
    return math.exp(total / count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=2400)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--out", type=Path, default=HERE / "tiny-llama")
    parser.add_argument(
        "--data-out", type=Path, default=None, help="where calibration.jsonl and eval.txt go (default: beside --out)"
    )
    args = parser.parse_args()
    embedded = args.out.resolve() == (HERE / "tiny-llama").resolve()
    # The shipped data and training record are replaced only when the embedded model itself is.
    data = args.data_out or (HERE / "data" if embedded else args.out.parent / f"{args.out.name}-data")

    torch.manual_seed(args.seed)
    random.seed(args.seed)
    torch.set_num_threads(2)
    train_texts, eval_texts = split_corpus()
    tokenizer = train_tokenizer(train_texts, args.vocab)
    train_ids = encode(tokenizer, train_texts)
    eval_ids = encode(tokenizer, eval_texts)
    print(f"train tokens {len(train_ids)}, held-out tokens {len(eval_ids)}", flush=True)

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    params = sum(p.numel() for p in model.parameters())
    print(f"parameters {params}", flush=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1, betas=(0.9, 0.95))
    warmup = 100

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, args.steps - warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    generator = torch.Generator().manual_seed(args.seed)
    started = time.time()
    for step in range(args.steps):
        starts = torch.randint(0, len(train_ids) - args.seq_len - 1, (args.batch,), generator=generator)
        batch = torch.stack([train_ids[s : s + args.seq_len] for s in starts.tolist()])
        loss = model(batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step} loss {loss.item():.3f} {time.time() - started:.0f}s", flush=True)

    model = model.to(torch.bfloat16)
    held_out_ppl = perplexity(model, eval_ids, 256)
    figures = {
        "parameters": params,
        "train_tokens": len(train_ids),
        "held_out_tokens": len(eval_ids),
        "steps": args.steps,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "train_seconds": round(time.time() - started),
        "held_out_perplexity_bf16": round(held_out_ppl, 1),
        "unigram_perplexity": round(unigram_perplexity(train_ids, eval_ids, len(tokenizer)), 1),
        "torch": torch.__version__,
    }
    print(json.dumps(figures, indent=2), flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    model.generation_config.do_sample = False
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    record = HERE / "tiny-llama-training.json" if embedded else args.out.parent / f"{args.out.name}-training.json"
    record.write_text(json.dumps(figures, indent=2) + "\n")

    data.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    paragraphs = [p for text in train_texts for p in text.splitlines() if len(p) > 400]
    with (data / "calibration.jsonl").open("w") as f:
        for paragraph in rng.sample(paragraphs, 128):
            f.write(json.dumps({"text": paragraph}) + "\n")
    (data / "eval.txt").write_text("\n\n".join(eval_texts) + "\n")


if __name__ == "__main__":
    main()
