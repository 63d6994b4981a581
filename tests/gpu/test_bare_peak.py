"""The harness's allocated peak agrees within 1 % with a bare script that builds the same model and batch.

The bare script is deliberately independent of the harness: plain transformers + torch, written out here."""
import json
import subprocess
import sys

import pytest
import yaml

from harness import CONF_DIR
from tests.helpers import ROOT, rows_of, run_cli

BARE = """
import sys, torch, transformers
m = {model}
cfg = transformers.LlamaConfig(hidden_size=m["hidden_size"], intermediate_size=m["intermediate_size"],
    num_attention_heads=m["num_attention_heads"], num_key_value_heads=m["num_attention_heads"],
    num_hidden_layers=m["num_hidden_layers"], vocab_size=m["vocab_size"],
    max_position_embeddings=m["max_position_embeddings"], tie_word_embeddings=False, use_cache=False,
    attn_implementation="sdpa")
torch.set_default_dtype(torch.bfloat16)
with torch.device("cuda"):
    model = transformers.LlamaForCausalLM(cfg)
torch.set_default_dtype(torch.float32)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
x = torch.randint(0, 512, ({batch}, {seq}), device="cuda")
for _ in range({steps}):
    loss = model(input_ids=x, labels=x).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
torch.cuda.synchronize()
print(torch.cuda.max_memory_allocated())
"""


@pytest.mark.gpu
@pytest.mark.parametrize("model", ["llama_60m", "llama_1b"])
def test_harness_peak_matches_bare_script(model, tmp_path):
    sizes = yaml.safe_load((CONF_DIR / "model" / f"{model}.yaml").read_text())
    script = BARE.format(model=json.dumps(sizes), batch=8, seq=256, steps=6)
    bare = int(subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.split()[-1])
    proc = run_cli([f"model={model}", "method=adamw", "train.batch_size=8", "train.seq_len=256",
                    "train.dtype=bf16", "train.steps=6", "train.warmup_steps=3", "run.device=cuda"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = rows_of(tmp_path)
    assert row["status"] == "ok", row["error"]
    ratio = row["peak_allocated"] / bare
    print(f"\n{model}: harness peak_allocated={row['peak_allocated']} bare max_memory_allocated={bare} "
          f"ratio={ratio:.5f}")
    assert abs(ratio - 1) <= 0.01
