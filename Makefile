# The two commands a newcomer needs: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= pinwork
SEED ?= 0

.PHONY: install demo test bench results clean

install:
	@bash scripts/install.sh

# Every stage writes a file that marks it complete; `make demo` skips complete stages and each
# command resumes its own unfinished work (checkpoints), so an interrupted demo picks up where it was.
W := $(WORKDIR)
demo: install $(W)/world/world.json $(W)/pinclip/pretrain/image/report.json $(W)/pinclip/pretrain/text/report.json \
      $(W)/pinclip/runs/tiny/eval.json \
      $(W)/embeddings/pinclip/LATEST $(W)/ranking/compare.json $(W)/experiments/pinclip_ranking/analysis.json
	$(PY) -m pinlift.summary --workdir $(W)

$(W)/world/world.json:
	$(VENV)/bin/pinworld generate --workdir $(W) --preset demo --seed $(SEED)

$(W)/pinclip/pretrain/image/report.json: $(W)/world/world.json
	$(VENV)/bin/pinclip pretrain-image --workdir $(W) --run image --steps 600

$(W)/pinclip/pretrain/text/report.json: $(W)/world/world.json
	$(VENV)/bin/pinclip pretrain-text --workdir $(W) --run text --steps 600

# both towers pretrained, the text tower then at the paper's 10x lower LR
$(W)/pinclip/runs/tiny/eval.json: $(W)/pinclip/pretrain/image/report.json $(W)/pinclip/pretrain/text/report.json
	$(VENV)/bin/pinclip train tiny pretrained_image=image pretrained_text=text text_lr_scale=0.1 --workdir $(W) --run tiny
	$(VENV)/bin/pinclip eval --workdir $(W) --run tiny

$(W)/embeddings/pinclip/LATEST: $(W)/pinclip/runs/tiny/eval.json
	$(VENV)/bin/pinclip publish --workdir $(W) --source run --run tiny --name pinclip

$(W)/ranking/compare.json: $(W)/embeddings/pinclip/LATEST
	$(PY) -m ranking.compare --workdir $(W) --arms ids,pinclip --seeds 0 --epochs 2 --results ''

$(W)/experiments/pinclip_ranking/analysis.json: $(W)/ranking/compare.json
	$(VENV)/bin/abtest simulate examples/pinclip_ranking.yaml --workdir $(W) --analyze

test: install
	$(PY) -m pytest tests

bench: install
	$(PY) benchmarks/bench_generate.py
	$(PY) benchmarks/bench_response.py
	$(PY) benchmarks/bench_publish.py
	$(PY) benchmarks/bench_ranking.py
	$(PY) benchmarks/bench_analyze.py
	$(PY) benchmarks/bench_pinclip.py

# The full comparison tables (not part of `make demo`): PinCLIP's baselines and ablations beside all
# ranking arms over three seeds and one ranking model per surface, one thread each on 2 cores (a torch
# process with 2 threads slows down many times over when another one runs). Both resume and reuse
# finished runs.
results: demo
	OMP_NUM_THREADS=1 $(VENV)/bin/pinclip ablate --workdir $(W) --reference tiny --quiet & ablate=$$!; \
	OMP_NUM_THREADS=1 $(PY) -m ranking.compare --workdir $(W) --seeds 0 1 2 --epochs 2 --results '' \
	    --per-surface ids; status=$$?; wait $$ablate && exit $$status
	$(PY) -m pinlift.results --workdir $(W) --out docs/results.md

clean:
	rm -rf $(WORKDIR)
