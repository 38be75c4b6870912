#!/usr/bin/env bash
# Multi-process jaxlab: one process per host (or per local CPU group), joined by jax.distributed.
#
# Cloud TPU VM pod slice (JAX finds the other hosts by itself); run on every worker, with the
# workdir on storage every host sees (a gcsfuse mount of a bucket, NFS): --workdir must be a
# local or mounted path (a gs:// URL is refused), while data.data_dir may be gs://...
#   gcloud compute tpus tpu-vm ssh NAME --worker=all --command \
#     "cd jaxlab && python -m jaxlab.main --config=configs/erm.py:cifar10 \
#        --workdir=/mnt/bucket/runs/cifar10 --config.data.data_dir=gs://BUCKET/tfds \
#        --config.distributed.enabled=True"
#
# Explicit coordinator (GPU hosts, or N CPU processes on one machine, as below):
#   launch/multihost.sh NUM_PROCESSES PORT CONFIG WORKDIR [--config.key=value ...]
set -euo pipefail
num_processes=${1:?number of processes}
port=${2:?coordinator port}
config=${3:?config, e.g. configs/erm.py:digits}
workdir=${4:?workdir}
shift 4
pids=()
for ((i = 0; i < num_processes; i++)); do
  python -m jaxlab.main --config="$config" --workdir="$workdir" \
    --config.distributed.enabled=True \
    --config.distributed.coordinator_address="127.0.0.1:$port" \
    --config.distributed.num_processes="$num_processes" \
    --config.distributed.process_id="$i" "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
