# The two commands a newcomer needs: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
SEED ?= 0
# `make demo`: the quick demo (in pinwork/; the `quick` world, the PinCLIP model shipped in pinclip/towers/ used
# as is; about 6 minutes on 2 cores); `make demo DEMO=full`: the demo behind docs/results.md (in pinwork-full/;
# the `demo` world, both towers pretrained in the workspace; about 90 minutes)
DEMO ?= quick
ifeq ($(DEMO),full)
WORKDIR ?= pinwork-full
PRESET := demo
RECIPE := demo
else ifeq ($(DEMO),quick)
WORKDIR ?= pinwork
PRESET := quick
RECIPE := quick
# three validation days to pick each ranker's check: with one (the default), the rankers of two seeds put fresh
# items so differently that the fresh lifts swung from +1% to +8% (docs/quick_demo.md)
RANKING := validation_days=3
else
$(error DEMO=$(DEMO): expected quick (the default) or full)
endif

.PHONY: install demo test bench results results-jobs towers openclipart clean

install:
	@bash scripts/install.sh

# Every stage writes a file that marks it complete; `make demo` skips complete stages and each
# command resumes its own unfinished work (checkpoints), so an interrupted demo picks up where it was.
W := $(WORKDIR)
R := $(W)/ranking/runs
# each stage's wall time goes into $(W)/demo.json
T := $(PY) -m pinlift.readouts.timed --out $(W)/demo.json
# what PinCLIP starts from: both towers pretrained in the workspace (full), or the model shipped in pinclip/towers/ (quick)
TOWERS := $(if $(filter full,$(DEMO)),$(W)/pinclip/pretrain/text/report.json $(W)/pinclip/pretrain/image/report.json)
demo: install $(W)/world/world.json $(TOWERS) $(W)/pinclip/runs/tiny/eval.json \
      $(W)/embeddings/pinclip/LATEST $(W)/ranking/compare.json $(W)/experiments/pinclip_ranking/analysis.json
	$(PY) -m pinlift.readouts.summary --workdir $(W)

$(W)/world/world.json:
	$(T) world -- $(VENV)/bin/pinworld generate --workdir $(W) --preset $(PRESET) --seed $(SEED)

$(W)/pinclip/pretrain/text/report.json: $(W)/world/world.json
	$(T) pretrain_text -- $(VENV)/bin/pinclip pretrain-text --workdir $(W) --run text --steps 3000

# the recipe (pinclip/configs/train_$(RECIPE).yaml): full, both towers pretrained in the workspace as in the paper;
# quick, the shipped model fine-tuned on the workspace's pins
$(W)/pinclip/runs/tiny/eval.json: $(W)/world/world.json $(TOWERS)
	$(T) pinclip_train -- $(VENV)/bin/pinclip train $(RECIPE) --workdir $(W) --run tiny
	$(T) pinclip_eval -- $(VENV)/bin/pinclip eval --workdir $(W) --run tiny

$(W)/embeddings/pinclip/LATEST: $(W)/pinclip/runs/tiny/eval.json
	$(T) publish -- $(VENV)/bin/pinclip publish --workdir $(W) --source run --run tiny --name pinclip

$(W)/ranking/compare.json: $(W)/embeddings/pinclip/LATEST
	$(T) ranking -- $(PY) -m ranking.compare --workdir $(W) --arms ids,pinclip --seeds 0 --epochs 2 --results '' $(RANKING)

# on the two runs it serves (not compare.json, which `make results` rewrites)
$(W)/experiments/pinclip_ranking/analysis.json: $(R)/ids_s0/eval.json $(R)/pinclip_s0/eval.json | $(W)/ranking/compare.json
	$(T) abtest -- $(VENV)/bin/abtest simulate examples/pinclip_ranking.yaml --workdir $(W) --analyze

test: install
	$(PY) -m pytest tests

bench: install
	$(PY) benchmarks/bench_generate.py
	$(PY) benchmarks/bench_response.py
	$(PY) benchmarks/bench_publish.py
	$(PY) benchmarks/bench_ranking.py
	$(PY) benchmarks/bench_analyze.py
	$(PY) benchmarks/bench_pinclip.py

# The full comparison tables (not part of `make demo`): PinCLIP's baselines and ablations, all ranking arms
# over three seeds, and one ranking model per surface. Every run is its own job, two at a time with one
# thread each on 2 cores (a torch process with 2 threads slows down many times over beside another one);
# finished runs are reused and unfinished ones resume. The last two commands only gather and write tables.
# Every ablation of `pinclip ablate` is listed, so that none runs alone at the end; one that changes nothing
# in the reference (here pretrained_image and in_batch_negatives) is skipped at once.
ABLATIONS := image_text no_pin_pin in_batch_negatives no_annotation no_matryoshka scratch_image pretrained_image scratch_text \
             image_only pretrained_towers untrained
ARMS := ids pinclip pinclip_shuffled topic topic_objects oracle
SEEDS := 0 1 2
results: demo
	$(if $(filter quick,$(DEMO)),$(error make results reads the full demo: run `make results DEMO=full`))
	OMP_NUM_THREADS=1 $(MAKE) -j2 --output-sync=target results-jobs
	$(VENV)/bin/pinclip ablate --workdir $(W) --reference tiny --quiet
	$(PY) -m ranking.compare --workdir $(W) --seeds $(SEEDS) --epochs 2 --results '' --per-surface ids
	$(PY) -m pinlift.readouts.results --workdir $(W) --out docs/results.md

results-jobs: $(foreach a,$(ABLATIONS),$(W)/pinclip/runs/tiny-$(a)/eval.json) \
              $(foreach a,$(ARMS),$(foreach s,$(SEEDS),$(R)/$(a)_s$(s)/eval.json)) \
              $(foreach s,$(SEEDS),$(R)/ids_ads_s$(s)/eval.json) \
              $(W)/experiments/pinclip_ranking_s1/analysis.json $(W)/experiments/pinclip_ranking_s2/analysis.json

$(W)/pinclip/runs/tiny-%/eval.json: $(W)/pinclip/pretrain/image/report.json
	$(VENV)/bin/pinclip ablate --workdir $(W) --reference tiny --only $* --quiet

$(W)/pinclip/pretrain/image/report.json: $(W)/world/world.json
	$(T) pretrain_image -- $(VENV)/bin/pinclip pretrain-image --workdir $(W) --run image --steps 4000

define ranking_run
$(R)/$(1)_s$(2)/eval.json: $(W)/embeddings/pinclip/LATEST
	$(PY) -m ranking.compare --workdir $(W) --arms $(1) --seeds $(2) --epochs 2 --results '' >/dev/null
endef
$(foreach a,$(ARMS),$(foreach s,$(SEEDS),$(eval $(call ranking_run,$(a),$(s)))))

# the headline A/B again with the rankers of seeds 1 and 2: the spread that ranker training adds
$(W)/experiments/pinclip_ranking_s%/analysis.json: $(R)/ids_s%/eval.json $(R)/pinclip_s%/eval.json
	$(VENV)/bin/abtest simulate examples/pinclip_ranking_s$*.yaml --workdir $(W) --analyze --quiet

# the IDs-only arm as one model per surface (homefeed, related, then ads: the last marks the job done)
$(R)/ids_ads_s%/eval.json: $(R)/ids_s%/eval.json
	$(PY) -m ranking.compare --workdir $(W) --arms ids --seeds $* --epochs 2 --results '' --per-surface ids >/dev/null

# what pinclip/towers/ ships, made on a `demo` world of another seed: the image tower (4,000 steps on annotations)
# and the PinCLIP model the quick demo starts from (the full demo's recipe, 1,000 steps, from that image tower)
towers: install
	$(VENV)/bin/pinworld generate --workdir pinwork-towers --preset demo --seed 1
	$(VENV)/bin/pinclip pretrain-image --workdir pinwork-towers --run image --steps 4000
	$(VENV)/bin/pinclip export-tower --workdir pinwork-towers --run image --out pinclip/towers/image_pinworld.safetensors
	$(VENV)/bin/pinclip pretrain-text --workdir pinwork-towers --run text --steps 3000
	$(VENV)/bin/pinclip train demo pretrained_image=image_pinworld steps=1000 warmup_steps=70 --workdir pinwork-towers --run model
	$(VENV)/bin/pinclip export-model --workdir pinwork-towers --run model --out pinclip/towers/pinclip_pinworld.safetensors

clean:
	rm -rf $(WORKDIR)

# PinCLIP on real pictures: the Open Clip Art table of docs/results.md (the library from Debian's openclipart-png and
# openclipart-svg, installed or unpacked under OPENCLIPART; every row one thread; finished rows are reused)
OPENCLIPART ?= /usr/share/openclipart
openclipart: install
	$(PY) benchmarks/openclipart/run.py --workdir openclipart-work --from $(OPENCLIPART) --write-docs
