"""Matching pods to the ML model they serve or train (exporter/models.py, docs/models.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.config import ConfigError, load_file_config, parse_file_config
from exporter.models import (
    DEFAULT_RULES,
    MAX_VALUE_CHARS,
    PHASES,
    ModelMatch,
    ModelRule,
    match_pod,
    parse_rules,
)
from tests.support import REPO

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"


def container(image: str = "busybox:1.36", *, name: str = "main", command: Any = None,
              args: Any = None, env: dict[str, str] | list[Any] | None = None) -> dict[str, Any]:
    """One entry of spec.containers as the API returns it (absent fields left out)."""
    out: dict[str, Any] = {"name": name, "image": image}
    if command is not None:
        out["command"] = command
    if args is not None:
        out["args"] = args
    if isinstance(env, dict):
        out["env"] = [{"name": k, "value": v} for k, v in env.items()]
    elif env is not None:
        out["env"] = env
    return out


def pod(*containers: dict[str, Any], name: str = "p", labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None, owner: tuple[str, str] | None = None,
        init: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A pod as the API returns it: camelCase keys, optional fields absent."""
    metadata: dict[str, Any] = {"name": name, "namespace": "ml", "uid": "0c7f-uid"}
    if labels:
        metadata["labels"] = labels
    if annotations:
        metadata["annotations"] = annotations
    if owner is not None:
        kind, owner_name = owner
        api = {"ReplicaSet": "apps/v1", "StatefulSet": "apps/v1", "DaemonSet": "apps/v1",
               "Job": "batch/v1"}.get(kind, "example.com/v1")
        metadata["ownerReferences"] = [{
            "apiVersion": api, "kind": kind, "name": owner_name, "uid": "1234-uid",
            "controller": True, "blockOwnerDeletion": True}]
    spec: dict[str, Any] = {"containers": list(containers) or [container()]}
    if init:
        spec["initContainers"] = init
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec,
            "status": {"phase": "Running"}}


def deployment_pod(*containers: dict[str, Any], deployment: str = "llama",
                   template_hash: str = "7d9f8b6c5d", labels: dict[str, str] | None = None,
                   hash_label: bool = True, **kw: Any) -> dict[str, Any]:
    """A pod created by Deployment `deployment` through its ReplicaSet."""
    all_labels = {"app": deployment, **(labels or {})}
    if hash_label:
        all_labels["pod-template-hash"] = template_hash
    return pod(*containers, name=f"{deployment}-{template_hash}-x7q2k", labels=all_labels,
               owner=("ReplicaSet", f"{deployment}-{template_hash}"), **kw)


def match(p: dict[str, Any], rules: tuple[ModelRule, ...] = DEFAULT_RULES) -> ModelMatch:
    return match_pod(p, rules)


# --- explicit label and annotation -----------------------------------------------------------


def test_explicit_label_without_phase_is_inference() -> None:
    m = match(pod(labels={"footprint.dev/model": "fraud-scorer"}))
    assert m == ModelMatch("fraud-scorer", "inference", "explicit", "", "")


@pytest.mark.parametrize(("given", "phase"), [
    ("training", "training"), ("other", "other"), (" Training ", "training"),
    ("serving", "inference"), ("", "inference"),
])
def test_explicit_label_phase(given: str, phase: str) -> None:
    m = match(pod(labels={"footprint.dev/model": "bert-ft", "footprint.dev/phase": given}))
    assert (m.model, m.phase, m.model_source) == ("bert-ft", phase, "explicit")


def test_explicit_annotation_with_phase_annotation() -> None:
    m = match(deployment_pod(annotations={"footprint.dev/model": " resnet50 ",
                                          "footprint.dev/phase": "other"}))
    assert m == ModelMatch("resnet50", "other", "explicit", "Deployment", "llama")


def test_explicit_label_beats_annotation() -> None:
    m = match(pod(labels={"footprint.dev/model": "from-label"},
                  annotations={"footprint.dev/model": "from-annotation"}))
    assert m.model == "from-label"


def test_blank_explicit_label_falls_through() -> None:
    m = match(deployment_pod(labels={"footprint.dev/model": "   "}))
    assert (m.model, m.model_source) == ("llama", "owner")


# --- KServe ----------------------------------------------------------------------------------


def kserve_predictor(*containers: dict[str, Any]) -> dict[str, Any]:
    """A RawDeployment-mode predictor pod with the labels KServe sets on it."""
    return pod(
        *(containers or (container(
            "kserve/sklearnserver:v0.14.0", name="kserve-container",
            args=["--model_name=sklearn-iris", "--model_dir=/mnt/models", "--http_port=8080"]),)),
        name="sklearn-iris-predictor-6b8f9c7d4-abcde",
        labels={"app": "isvc.sklearn-iris-predictor", "component": "predictor",
                "serving.kserve.io/inferenceservice": "sklearn-iris",
                "pod-template-hash": "6b8f9c7d4"},
        annotations={"serving.kserve.io/deploymentMode": "RawDeployment"},
        owner=("ReplicaSet", "sklearn-iris-predictor-6b8f9c7d4"))


def test_kserve_predictor_pod() -> None:
    m = match(kserve_predictor())
    assert m == ModelMatch("sklearn-iris", "inference", "kserve", "Deployment",
                           "sklearn-iris-predictor")


def test_order_matters_kserve_running_vllm_is_kserve() -> None:
    vllm = container("vllm/vllm-openai:v0.6.3", name="kserve-container",
                     args=["--model", LLAMA, "--port", "8080"])
    m = match(kserve_predictor(vllm))
    assert (m.model, m.model_source) == ("sklearn-iris", "kserve")
    # Without the KServe label the same container is matched by the vLLM rule.
    assert match(pod(vllm)).model_source == "vllm"


# --- vLLM ------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [
    container("vllm/vllm-openai:v0.6.3", command=["vllm"],
              args=["serve", LLAMA, "--tensor-parallel-size", "2"]),
    container("vllm/vllm-openai:v0.6.3", command=["vllm", "serve", LLAMA]),
    container("vllm/vllm-openai:v0.6.3", command=["/bin/sh", "-c"],
              args=[f"vllm serve {LLAMA} --trust-remote-code --max-model-len 8192"]),
    container("vllm/vllm-openai:v0.6.3", args=[f"--model={LLAMA}", "--port=8000"]),
    container("vllm/vllm-openai:v0.6.3", args=["--model", LLAMA, "--port", "8000"]),
    container("python:3.11", command=["python", "-m", "vllm.entrypoints.openai.api_server"],
              args=["--model", LLAMA]),
    container("vllm/vllm-openai:v0.6.3", command=["vllm", "serve"],
              args=["--model", LLAMA, "--served-model-name", "llama"]),
    container("vllm/vllm-openai:v0.6.3", args=["--model", "$(MODEL)"], env={"MODEL": LLAMA}),
], ids=["serve-in-args", "serve-in-command", "shell-string", "model=X", "model X",
        "api_server-module", "serve-then-flag", "env-reference"])
def test_vllm(spec: dict[str, Any]) -> None:
    m = match(deployment_pod(spec))
    assert m == ModelMatch(LLAMA, "inference", "vllm", "Deployment", "llama")


def test_model_flag_is_ignored_without_vllm() -> None:
    m = match(deployment_pod(container("example/trainer:1", args=["--model", "resnet"])))
    assert (m.model, m.model_source) == ("llama", "owner")


def test_model_id_is_not_model() -> None:
    m = match(pod(container("vllm/vllm-openai:v0.6.3", args=["--model-id", LLAMA])))
    assert m.model_source == "none"


def test_escaped_env_reference_is_not_expanded() -> None:
    spec = container("vllm/vllm-openai:v0.6.3", args=["--model", "$$(MODEL)"],
                     env={"MODEL": LLAMA})
    assert match(pod(spec)).model == "$(MODEL)"


def test_containers_are_tried_in_order_and_init_containers_ignored() -> None:
    sidecar = container("docker.io/istio/proxyv2:1.22.0", name="istio-proxy",
                        args=["proxy", "sidecar"])
    vllm = container("vllm/vllm-openai:v0.6.3", name="vllm", args=["--model", LLAMA])
    other = container("vllm/vllm-openai:v0.6.3", name="second", args=["--model", "other/m"])
    assert match(pod(sidecar, vllm, other)).model == LLAMA
    init = container("vllm/vllm-openai:v0.6.3", name="warm", args=["--model", "init/m"])
    assert match(pod(sidecar, init=[init])).model_source == "none"


# --- Hugging Face TGI ------------------------------------------------------------------------


TGI_IMAGE = "ghcr.io/huggingface/text-generation-inference:2.4.0"


@pytest.mark.parametrize("spec", [
    container(TGI_IMAGE, args=["--model-id", LLAMA, "--num-shard", "2"]),
    container(TGI_IMAGE, args=[f"--model-id={LLAMA}"]),
    container("registry.example.com/llm:1", command=["text-generation-launcher"],
              args=["--model-id", LLAMA]),
    container(TGI_IMAGE, env={"MODEL_ID": LLAMA, "NUM_SHARD": "2"}),
], ids=["args", "args=", "launcher", "env"])
def test_tgi(spec: dict[str, Any]) -> None:
    m = match(deployment_pod(spec))
    assert (m.model, m.phase, m.model_source) == (LLAMA, "inference", "tgi")


def test_tgi_env_from_secret_reveals_nothing() -> None:
    env = [{"name": "MODEL_ID",
            "valueFrom": {"configMapKeyRef": {"name": "tgi", "key": "model"}}}]
    m = match(deployment_pod(container(TGI_IMAGE, env=env)))
    assert (m.model, m.model_source) == ("llama", "owner")


# --- NVIDIA NIM ------------------------------------------------------------------------------


def test_nim_env() -> None:
    spec = container("nvcr.io/nim/nvidia/llm-nim:1.12.0",
                     env={"NIM_MODEL_NAME": "hf://meta-llama/Llama-3.1-8B-Instruct"})
    m = match(deployment_pod(spec))
    assert (m.model, m.model_source) == ("hf://meta-llama/Llama-3.1-8B-Instruct", "nim")


def test_nim_image() -> None:
    spec = container("nvcr.io/nim/meta/llama-3.1-8b-instruct:1.3.3",
                     env={"NGC_API_KEY": "nvapi-x", "NIM_CACHE_PATH": "/opt/nim/.cache"})
    m = match(pod(spec))
    assert (m.model, m.phase, m.model_source) == ("meta/llama-3.1-8b-instruct", "inference",
                                                  "nim")


def test_nim_env_in_a_client_is_not_a_nim() -> None:
    client = container("example.com/rag-frontend:2", env={"NIM_MODEL_NAME": "meta/llama3"})
    assert match(pod(client)).model_source == "none"


# --- Triton ----------------------------------------------------------------------------------


TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.05-py3"


def test_triton_load_model() -> None:
    spec = container(TRITON_IMAGE, command=["tritonserver"],
                     args=["--model-repository=s3://models", "--model-control-mode=explicit",
                           "--load-model=densenet_onnx", "--load-model=bert"])
    m = match(deployment_pod(spec, deployment="triton"))
    assert m == ModelMatch("densenet_onnx", "inference", "triton", "Deployment", "triton")


@pytest.mark.parametrize("args", [
    ["--model-repository=/models"],
    ["--model-repository=/models", "--model-control-mode=explicit", "--load-model=*"],
])
def test_triton_without_a_named_model_falls_through_to_owner(args: list[str]) -> None:
    spec = container(TRITON_IMAGE, command=["tritonserver"], args=args)
    m = match(deployment_pod(spec, deployment="triton"))
    assert m == ModelMatch("triton", "other", "owner", "Deployment", "triton")


# --- Ray Serve -------------------------------------------------------------------------------


def ray_pod(cluster: str, node_type: str, serve: str | None) -> dict[str, Any]:
    labels = {"ray.io/cluster": cluster, "ray.io/node-type": node_type,
              "ray.io/group": "headgroup" if node_type == "head" else "gpu-group",
              "ray.io/identifier": f"{cluster}-{node_type}", "ray.io/is-ray-node": "yes",
              "app.kubernetes.io/name": "kuberay",
              "app.kubernetes.io/created-by": "kuberay-operator"}
    if serve is not None:
        labels["ray.io/serve"] = serve
    ray = container("rayproject/ray-ml:2.9.0-gpu", name="ray-worker",
                    command=["/bin/bash", "-lc", "--"],
                    args=["ulimit -n 65536; ray start --address=x:6379 --block"])
    return pod(ray, labels=labels, owner=("RayCluster", cluster))


@pytest.mark.parametrize(("node_type", "serve"), [("head", "false"), ("worker", "true")])
def test_rayservice_pods(node_type: str, serve: str) -> None:
    m = match(ray_pod("text-summarizer-raycluster-6mj28", node_type, serve))
    assert m == ModelMatch("text-summarizer", "inference", "ray-serve", "RayCluster",
                           "text-summarizer-raycluster-6mj28")


def test_raycluster_without_serve_label_falls_through_to_owner() -> None:
    m = match(ray_pod("batch-embed-raycluster-x2b4c", "worker", None))
    assert m == ModelMatch("batch-embed-raycluster-x2b4c", "other", "owner", "RayCluster",
                           "batch-embed-raycluster-x2b4c")


def test_serving_raycluster_with_its_own_name() -> None:
    assert match(ray_pod("my-serve", "worker", "true")).model == "my-serve"


# --- Kubeflow training-operator --------------------------------------------------------------


def test_pytorchjob_worker() -> None:
    worker = pod(
        container("docker.io/kubeflowkatib/pytorch-mnist:v1beta1-45c5727", name="pytorch",
                  command=["python3", "/opt/pytorch-mnist/mnist.py", "--epochs=1"],
                  env={"MASTER_PORT": "23456", "WORLD_SIZE": "3", "RANK": "1"}),
        name="pytorch-simple-worker-0",
        labels={"training.kubeflow.org/job-name": "pytorch-simple",
                "training.kubeflow.org/operator-name": "pytorchjob-controller",
                "training.kubeflow.org/replica-index": "0",
                "training.kubeflow.org/replica-type": "worker"},
        owner=("PyTorchJob", "pytorch-simple"))
    assert match(worker) == ModelMatch("pytorch-simple", "training", "kubeflow-training",
                                       "PyTorchJob", "pytorch-simple")


# --- owner fallback --------------------------------------------------------------------------


def test_deployment_pod_with_template_hash_label() -> None:
    m = match(deployment_pod(container("nginx:1.27"), deployment="web-frontend"))
    assert m == ModelMatch("web-frontend", "other", "owner", "Deployment", "web-frontend")


def test_deployment_pod_without_template_hash_label() -> None:
    m = match(deployment_pod(deployment="web", template_hash="5f8d97c9bd", hash_label=False))
    assert (m.owner_kind, m.owner_name) == ("Deployment", "web")


@pytest.mark.parametrize(("rs", "labels"), [
    ("web-v2", {}),                                   # last segment is not hash-like
    ("web-5f8d97c9bd", {"pod-template-hash": "77b9d6f4c"}),  # label does not match the suffix
    ("web-aeiou", {}),                                # vowels never appear in generated hashes
])
def test_replicaset_kept_when_no_template_hash(rs: str, labels: dict[str, str]) -> None:
    m = match(pod(labels=labels, owner=("ReplicaSet", rs)))
    assert (m.model, m.owner_kind, m.owner_name) == (rs, "ReplicaSet", rs)


def test_statefulset_and_daemonset() -> None:
    sts = match(pod(name="etcd-0", owner=("StatefulSet", "etcd")))
    assert sts == ModelMatch("etcd", "other", "owner", "StatefulSet", "etcd")
    ds = match(pod(name="node-exporter-abcde", owner=("DaemonSet", "node-exporter")))
    assert (ds.owner_kind, ds.model) == ("DaemonSet", "node-exporter")


@pytest.mark.parametrize(("job", "kind", "name"), [
    ("nightly-finetune-28950840", "CronJob", "nightly-finetune"),
    ("train-once", "Job", "train-once"),
    ("eval-1234567", "Job", "eval-1234567"),  # 7 digits: not a CronJob's schedule suffix
])
def test_jobs_and_cronjobs(job: str, kind: str, name: str) -> None:
    m = match(pod(name=f"{job}-q8k2n", labels={"job-name": job}, owner=("Job", job)))
    assert m == ModelMatch(name, "other", "owner", kind, name)


def test_other_owner_kinds_as_is() -> None:
    m = match(pod(owner=("Workflow", "etl-pipeline")))
    assert (m.model, m.owner_kind) == ("etl-pipeline", "Workflow")


def test_bare_pod_matches_nothing() -> None:
    assert match(pod(container("busybox:1.36", command=["sleep", "3600"]))) == ModelMatch(
        "", "other", "none", "", "")


def test_only_the_controller_owner_counts() -> None:
    p = pod()
    p["metadata"]["ownerReferences"] = [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "cfg", "uid": "u"}]
    assert match(p).model_source == "none"


def test_static_pod_mirror_is_not_a_model() -> None:
    m = match(pod(name="kube-apiserver-node-1", owner=("Node", "node-1")))
    assert m == ModelMatch("", "other", "none", "Node", "node-1")


# --- user rules ------------------------------------------------------------------------------


def test_user_rules_before_defaults_win() -> None:
    user = parse_rules([{"name": "team", "source": "label", "key": "team.example.com/model",
                         "phase": "training"}])
    p = deployment_pod(container("vllm/vllm-openai:v0.6.3", args=["--model", LLAMA]),
                       labels={"team.example.com/model": "llama-ft-v3"})
    assert match(p, user + DEFAULT_RULES) == ModelMatch(
        "llama-ft-v3", "training", "team", "Deployment", "llama")
    assert match(p, DEFAULT_RULES + user).model_source == "vllm"


def models_section(data: object) -> tuple[ModelRule, ...]:
    """The rules in force for a config file whose `models:` section is `data`."""
    return parse_file_config({"models": data}).models.effective_rules


def test_models_section() -> None:
    data = {"rules": [{"name": "sglang", "source": "arg", "key": "--model-path",
                       "phase": "inference", "when": "sglang"}]}
    rules = models_section(data)
    assert [r.name for r in rules[:2]] == ["sglang", "explicit"]
    assert rules[1:] == DEFAULT_RULES
    assert models_section({**data, "default_rules": False}) == rules[:1]
    assert models_section(None) == DEFAULT_RULES
    assert models_section({"rules": None}) == DEFAULT_RULES
    assert parse_file_config({}).models.effective_rules == DEFAULT_RULES
    sglang = container("lmsysorg/sglang:v0.4.0", command=["python3", "-m", "sglang.launch_server"],
                       args=["--model-path", LLAMA])
    assert match(pod(sglang), rules).model_source == "sglang"


def test_user_rule_sources_selector_and_pattern() -> None:
    rules = parse_rules([
        {"name": "by-env", "source": "env", "key": "SERVED_MODEL", "phase": "inference",
         "selector": "tier=gpu,!canary"},
        {"name": "by-image", "source": "image", "key": r"models/(?P<model>[a-z0-9-]+):",
         "phase": "inference", "selector": "tier!=cpu"},
        {"name": "by-annotation", "source": "annotation", "key": "example.com/model",
         "phase": "other", "pattern": r"^models/(?P<model>.+)$", "phase_key": "example.com/ph"},
    ])
    env = container("example/server:1", env={"SERVED_MODEL": "m1"})
    assert match(pod(env, labels={"tier": "gpu"}), rules).model == "m1"
    assert match(pod(env, labels={"tier": "gpu", "canary": "1"}), rules).model_source == "none"
    image = container("registry.example.com/models/ranker-v2:3")
    assert match(pod(image), rules).model == "ranker-v2"
    assert match(pod(image, labels={"tier": "cpu"}), rules).model_source == "none"
    ann = pod(annotations={"example.com/model": "models/ocr", "example.com/ph": "training"})
    assert match(ann, rules) == ModelMatch("ocr", "training", "by-annotation", "", "")
    assert match(pod(annotations={"example.com/model": "ocr"}), rules).model_source == "none"


@pytest.mark.parametrize(("data", "message"), [
    ({"name": "x"}, "expected a list of rule mappings, got dict"),
    (["vllm"], "models.rules[0]: expected a mapping, got 'vllm'"),
    ([{"name": "a", "source": "label", "key": "k", "phase": "other", "when_": "x"}],
     "models.rules[0].when_: unknown key (expected one of: name, source, key, phase, when, "
     "phase_key, selector, pattern)"),
    ([{"name": "a", "source": "label", "phase": "other"}],
     "models.rules[0].key: missing (expected a non-empty string)"),
    ([{"name": "a", "source": "label", "key": "k"}],
     "models.rules[0].phase: missing (expected one of inference, training, other)"),
    ([{"name": "a", "source": "label", "key": "k", "phase": "other"},
      {"name": "b", "source": "label", "key": "k", "phase": "other"},
      {"name": "c", "source": "labels", "key": "k", "phase": "other"}],
     "models.rules[2].source: expected one of label, annotation, arg, subcommand, env, image, "
     "got 'labels'"),
    ([{"name": "a", "source": "label", "key": "k", "phase": "serving"}],
     "models.rules[0].phase: expected one of inference, training, other, got 'serving'"),
    ([{"name": 7, "source": "label", "key": "k", "phase": "other"}],
     "models.rules[0].name: expected a string, got 7"),
    ([{"name": "a", "source": "label", "key": ["k"], "phase": "other"}],
     "models.rules[0].key: expected a string, got list"),
    ([{"name": " ", "source": "label", "key": "k", "phase": "other"}],
     "models.rules[0].name: expected a non-empty string, got ' '"),
    ([{"name": "owner", "source": "label", "key": "k", "phase": "other"}],
     "models.rules[0].name: expected a name other than 'owner' and 'none', got 'owner'"),
    ([{"name": "a", "source": "label", "key": "", "phase": "other"}],
     "models.rules[0].key: expected a non-empty string, got ''"),
    ([{"name": "a", "source": "arg", "key": "--m", "phase": "other", "when": "vllm("}],
     "models.rules[0].when: expected a regular expression, got 'vllm(' "
     "(missing ), unterminated subpattern at position 4)"),
    ([{"name": "a", "source": "image", "key": "nvcr.io/nim/.*", "phase": "inference"}],
     "models.rules[0].key: expected a regular expression with a named group 'model', "
     "got 'nvcr.io/nim/.*'"),
    ([{"name": "a", "source": "label", "key": "k", "phase": "other", "pattern": "(.+)"}],
     "models.rules[0].pattern: expected a regular expression with a named group 'model', "
     "got '(.+)'"),
    ([{"name": "a", "source": "label", "key": "k", "phase": "other", "selector": "a=b=c"}],
     "models.rules[0].selector: expected a label selector of comma-separated key, !key, "
     "key=value or key!=value, got 'a=b=c'"),
    ([{"name": "a", "source": "label", "key": "k", "phase": "other", "phase_key": "bad key"}],
     "models.rules[0].phase_key: expected a label key, got 'bad key'"),
])
def test_parse_rules_errors(data: object, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_rules(data)
    expected = message if message.startswith("models.rules") else f"models.rules: {message}"
    assert str(info.value) == expected


def test_models_section_errors() -> None:
    with pytest.raises(ConfigError, match=r"^models: expected a mapping, got list$"):
        models_section([])
    with pytest.raises(ConfigError, match=r"^models\.default: unknown key \(expected one of: "
                                          r"rules, default_rules\)$"):
        models_section({"default": False})
    with pytest.raises(ConfigError, match=r"^models\.default_rules: expected true or false, "
                                          r"got 'no'$"):
        models_section({"default_rules": "no"})
    with pytest.raises(ConfigError, match=r"^models\.rules\[0\]\.source: "):
        models_section({"rules": [{"name": "a", "source": "x", "key": "k", "phase": "other"}]})


def test_models_section_from_a_config_file(tmp_path: Path) -> None:
    path = tmp_path / "footprint.yaml"
    path.write_text("models:\n  default_rules: false\n  rules:\n    - name: team\n"
                    "      source: label\n      key: example.com/model\n      phase: training\n")
    config = load_file_config(path)
    assert config.models.effective_rules == (
        ModelRule("team", "label", "example.com/model", "training"),)
    assert isinstance(config.models.rules[0], ModelRule)
    path.write_text("models:\n  rules:\n    - {name: team, source: labels, key: k, "
                    "phase: other}\n")
    with pytest.raises(ConfigError) as info:
        load_file_config(path)
    assert str(info.value) == (
        f"--config.file {path}: models.rules[0].source: expected one of label, annotation, "
        "arg, subcommand, env, image, got 'labels'")


def test_rule_constructor_validates() -> None:
    with pytest.raises(ValueError, match=r"^when: expected a regular expression"):
        ModelRule("a", "arg", "--m", "inference", when="[")
    assert ModelRule("a", "arg", "--m", "inference") == ModelRule("a", "arg", "--m", "inference")


def test_default_rules_are_documented_in_order() -> None:
    doc = (REPO / "docs" / "models.md").read_text()
    rows = [line for line in doc.splitlines() if line.startswith("| ") and "`" in line]
    for rule, row in zip(DEFAULT_RULES, rows, strict=False):
        assert f"| {rule.name} | {rule.source} |" in row, (rule, row)
    assert len(rows) >= len(DEFAULT_RULES)


# --- hostile values --------------------------------------------------------------------------


def test_hostile_label_values() -> None:
    huge = 'x"\n\\' * 2500  # 10 kB with quotes, newlines, backslashes
    m = match(pod(labels={"footprint.dev/model": huge, "footprint.dev/phase": huge}))
    assert type(m.model) is str and len(m.model) == MAX_VALUE_CHARS
    assert m.model == huge.strip()[:MAX_VALUE_CHARS]
    assert m.phase == "inference"


def test_lone_surrogates_and_str_subclasses_become_plain_str() -> None:
    class Sneaky(str):
        def __str__(self) -> str:
            raise AssertionError("never called")

    m = match(pod(labels={"footprint.dev/model": Sneaky("a\ud800b")}))
    assert type(m.model) is str
    m.model.encode("utf-8")  # encodable: a Prometheus label value


def test_malformed_pods_never_raise() -> None:
    malformed: list[Any] = [{}, {"metadata": None, "spec": []}, {"metadata": {"labels": ["a"]}},
                {"metadata": {"labels": {1: 2, "footprint.dev/model": 3}}},
                {"metadata": {"ownerReferences": [None, {"controller": True, "kind": 1}]}},
                {"spec": {"containers": [None, "x", {"image": 5, "args": "--model x",
                                                      "env": [None, {"name": 1}]}]}},
                {"spec": {"containers": [{"image": "vllm", "args": ['"unbalanced', "a b"]}]}},
                None, "pod"]
    for bad in malformed:
        assert match(bad).model_source in ("none", "vllm")


texts = st.text(max_size=300)


@settings(max_examples=200, deadline=None)
@given(labels=st.dictionaries(st.sampled_from(["footprint.dev/model", "footprint.dev/phase",
                                               "serving.kserve.io/inferenceservice",
                                               "ray.io/cluster", "ray.io/serve",
                                               "pod-template-hash", "x"]) | texts, texts),
       annotations=st.dictionaries(texts, texts, max_size=3),
       image=texts | st.sampled_from(["vllm/vllm-openai", "nvcr.io/nim/a/b:1",
                                      "ghcr.io/huggingface/text-generation-inference"]),
       command=st.lists(texts, max_size=4),
       args=st.lists(texts | st.sampled_from(["serve", "--model", "--model-id",
                                              "--load-model"]), max_size=8),
       env=st.dictionaries(st.sampled_from(["MODEL_ID", "NIM_MODEL_NAME"]) | texts, texts,
                           max_size=3),
       owner=st.none() | st.tuples(st.sampled_from(["ReplicaSet", "Job", "Node", "Other"]),
                                   texts))
def test_arbitrary_text_never_raises(labels: dict[str, str], annotations: dict[str, str],
                                     image: str, command: list[str], args: list[str],
                                     env: dict[str, str], owner: tuple[str, str] | None) -> None:
    p = pod(container(image, command=command, args=args, env=env), labels=labels,
            annotations=annotations, owner=owner)
    m = match(p)
    for value in (m.model, m.owner_kind, m.owner_name):
        assert type(value) is str and len(value) <= MAX_VALUE_CHARS
        assert value == value.strip()
    assert m.phase in PHASES
    assert type(m.model_source) is str
