"""Tests of launch/slurm.sh (submit) and launch/slurm.sbatch (the job) with
stub `sbatch`, `srun`, `scontrol` and a stub python that records the
arguments and environment each task would start vit_jax.main with."""

import json
import shlex

import pytest

from tests.launch import stubs

MAIN = ['--', '--config=configs/vit.py:b16,cifar10', '--workdir=/shared/w1']
SBATCH_PATH = str(stubs.REPO / 'launch' / 'slurm.sbatch')

# `scontrol show hostnames gpu[01-02]` -> one host per line.
SCONTROL = 'print("gpu01\\ngpu02")'
# `srun ... bash SCRIPT ARGS`: runs the command once per task with the
# SLURM_* variables srun would set (ntasks from --ntasks, per node from
# --ntasks-per-node).
SRUN = '''
a = sys.argv[1:]
opt = dict(x[2:].split("=", 1) for x in a if x.startswith("--") and "=" in x
           and a.index(x) < a.index("bash"))
cmd = a[a.index("bash"):]
n, per_node = int(opt["ntasks"]), int(opt["ntasks-per-node"])
for t in range(n):
  env = dict(os.environ, SLURM_NTASKS=str(n), SLURM_PROCID=str(t),
             SLURM_LOCALID=str(t % per_node), SLURM_NODEID=str(t // per_node))
  subprocess.run(cmd, env=env, check=True)
'''
# Stands in for python: records the arguments and some environment.
PYTHON = '''
keys = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
        "CUDA_VISIBLE_DEVICES")
with open(os.environ["STUB_TASKS"], "a") as f:
  f.write(json.dumps({"cwd": os.getcwd(), "argv": sys.argv[1:],
                      **{k: os.environ.get(k) for k in keys}}) + "\\n")
'''


def slurm_job_env(tmp_path, **extra):
  """A fake allocation: job 4242 on nodes gpu[01-02] with 4 GPUs each."""
  settings = dict(
      SLURM_JOB_ID='4242', SLURM_JOB_NODELIST='gpu[01-02]', SLURM_NNODES='2',
      SLURM_GPUS_ON_NODE='4', SLURM_SUBMIT_DIR=str(stubs.REPO),
      PYTHON='fakepython', STUB_TASKS=str(tmp_path / 'tasks.jsonl'),
      VIT_JAX_LOGDIR=str(tmp_path / 'logs'))
  settings.update(extra)
  env = stubs.make_env(
      tmp_path, {'scontrol': SCONTROL, 'srun': SRUN, 'fakepython': PYTHON},
      **settings)
  env.pop('CUDA_VISIBLE_DEVICES', None)  # tests/conftest.py sets it to ''
  return env


def test_submit_dry_run_prints_the_sbatch_command(tmp_path):
  env = stubs.make_env(tmp_path, {'sbatch': ''})
  r = stubs.run('slurm.sh', ['--dry-run', '--nodes=2', '--gpus-per-node=4',
                             '--partition=gpu', '--time=02:00:00', *MAIN], env)
  assert r.returncode == 0, r.stderr
  [cmd] = [shlex.split(l) for l in stubs.plus_lines(r.stdout)]
  repo = str(stubs.REPO)
  assert cmd == ['sbatch', '--nodes=2', '--gpus-per-node=4',
                 '--ntasks-per-node=1', f'--chdir={repo}',
                 f'--output={repo}/logs/vit_jax-%j.out', '--partition=gpu',
                 '--time=02:00:00', SBATCH_PATH, *MAIN]
  assert stubs.calls(env) == []
  head = r.stdout.split('\n+ ')[0]
  assert 'processes      2 (one per node)' in head and 'gpu' in head


def test_submit_per_gpu_runs_sbatch(tmp_path):
  env = stubs.make_env(tmp_path, {'sbatch': 'print("Submitted batch job 7")'},
                       SLURM_NODES='3')
  r = stubs.run('slurm.sh', ['--per-gpu', '--gpus-per-node=8', *MAIN], env)
  assert r.returncode == 0, r.stderr
  assert 'Submitted batch job 7' in r.stdout
  [call] = stubs.calls(env)
  assert call[:4] == ['sbatch', '--nodes=3', '--gpus-per-node=8',
                      '--ntasks-per-node=8']
  assert call[-5:] == [SBATCH_PATH, '--per-gpu', *MAIN]
  assert 'processes      24 (one per GPU)' in r.stdout


@pytest.mark.parametrize('args,with_sbatch,match', [
    (['--nodes=0', *MAIN], True, "--nodes='0' is not a positive integer"),
    (['--nodes=two', *MAIN], True, "--nodes='two' is not a positive integer"),
    (['--nodes=-1', *MAIN], True, "--nodes='-1' is not a positive integer"),
    (MAIN, True, 'no node count'),
    (['--nodes=2', '--gpus-per-node=0', *MAIN], True,
     "--gpus-per-node='0' is not a positive integer"),
    (['--nodes=2', *MAIN], False, 'sbatch not found'),
    (['--nodes=2', '--', '--config=c'], True, 'no --workdir=...'),
    (['--nodes=2', '--', '--workdir=w'], True, 'no --config=...'),
    (['--nodes=2'], True, "no vit_jax.main arguments after '--'"),
])
def test_submit_refusals(tmp_path, args, with_sbatch, match):
  env = stubs.make_env(tmp_path, {'sbatch': ''} if with_sbatch else {})
  r = stubs.run('slurm.sh', args, env)
  assert r.returncode != 0
  assert match in r.stderr and len(r.stderr.strip().splitlines()) == 1
  assert stubs.calls(env) == []


@pytest.mark.parametrize('per_gpu', [False, True])
def test_job_dry_run_prints_srun(tmp_path, per_gpu):
  env = slurm_job_env(tmp_path)
  flags = ['--dry-run'] + (['--per-gpu'] if per_gpu else [])
  r = stubs.run('slurm.sbatch', [*flags, *MAIN], env)
  assert r.returncode == 0, r.stderr
  per_node = 4 if per_gpu else 1
  [cmd] = [shlex.split(l) for l in stubs.plus_lines(r.stdout)]
  assert cmd == ['srun', '--nodes=2', f'--ntasks-per-node={per_node}',
                 f'--ntasks={2 * per_node}', '--kill-on-bad-exit=1',
                 f'--chdir={stubs.REPO}',
                 f'--output={tmp_path}/logs/vit_jax-%j-%t.log', 'bash',
                 SBATCH_PATH, '--task', *(['--per-gpu'] if per_gpu else []),
                 *MAIN]
  assert stubs.calls(env) == []
  assert 'coordinator  first node, port 24242' in r.stdout


@pytest.mark.parametrize('per_gpu', [False, True])
def test_job_starts_one_process_per_node_or_gpu(tmp_path, per_gpu):
  env = slurm_job_env(tmp_path)
  r = stubs.run('slurm.sbatch', [*(['--per-gpu'] if per_gpu else []), *MAIN],
                env)
  assert r.returncode == 0, r.stderr
  tasks = [json.loads(l) for l in
           (tmp_path / 'tasks.jsonl').read_text().splitlines()]
  n = 8 if per_gpu else 2
  assert len(tasks) == n
  for t, task in enumerate(tasks):
    assert task['argv'] == [
        '-m', 'vit_jax.main', '--distributed',
        '--coordinator_address=gpu01:24242', f'--num_processes={n}',
        f'--process_id={t}', *MAIN[1:]]
    # The job is described by main's flags, not by environment variables.
    assert task['JAX_COORDINATOR_ADDRESS'] is None
    assert task['JAX_NUM_PROCESSES'] is None
    assert task['JAX_PROCESS_ID'] is None
    assert task['cwd'] == str(stubs.REPO)
    assert task['CUDA_VISIBLE_DEVICES'] == (str(t % 4) if per_gpu else None)
  assert (tmp_path / 'logs').is_dir()


def test_job_port_override_and_refusals(tmp_path):
  env = slurm_job_env(tmp_path, VIT_JAX_PORT='31000')
  r = stubs.run('slurm.sbatch', MAIN, env)
  assert r.returncode == 0, r.stderr
  assert '--coordinator_address=gpu01:31000' in (
      tmp_path / 'tasks.jsonl').read_text()

  (tmp_path / 'outside').mkdir()
  outside = stubs.make_env(tmp_path / 'outside')
  r = stubs.run('slurm.sbatch', MAIN, outside)
  assert r.returncode != 0
  assert 'SLURM_JOB_ID is not set: not inside a SLURM allocation' in r.stderr

  no_gpus = slurm_job_env(tmp_path, SLURM_GPUS_ON_NODE='')
  r = stubs.run('slurm.sbatch', ['--per-gpu', *MAIN], no_gpus)
  assert r.returncode != 0 and '--per-gpu needs the GPUs per node' in r.stderr

  r = stubs.run('slurm.sbatch', ['--task', *MAIN], env)
  assert r.returncode != 0 and 'SLURM_NTASKS is not set' in r.stderr
