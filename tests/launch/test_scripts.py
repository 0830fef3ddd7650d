"""launch/ scripts: dry-run commands, refusals, SLURM -> jax.distributed.

External tools (gcloud, sbatch, python on a cluster) are replaced by stub
executables on PATH that record their arguments.
"""

import os
import pathlib
import shutil
import stat
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
LAUNCH = REPO / 'launch'
# PATH for the scripts: a folder of links to the basic tools only, so that a
# gcloud / sbatch installed on the machine is never reached.
TOOLS = ('bash', 'env', 'sed', 'cat', 'date', 'head', 'grep', 'sort', 'tar',
         'git', 'mkdir', 'dirname', 'tail', 'gzip', 'python3')
_BASE = pathlib.Path('/tmp/vit_jax_launch_test_bin')


def _base_path() -> str:
  _BASE.mkdir(exist_ok=True)
  for t in TOOLS:
    src = shutil.which(t)
    if src and not (_BASE / t).exists():
      (_BASE / t).symlink_to(src)
  return str(_BASE)


BASE_PATH = _base_path()


def stub(bin_dir, name, body):
  """An executable `name` in bin_dir running the bash `body`."""
  bin_dir.mkdir(exist_ok=True)
  p = bin_dir / name
  p.write_text('#!/usr/bin/env bash\n' + body + '\n')
  p.chmod(p.stat().st_mode | stat.S_IEXEC)
  return p


def run(script, *args, path=BASE_PATH, env=None):
  e = {'PATH': path, 'HOME': os.environ.get('HOME', '/tmp')}
  e.update(env or {})
  return subprocess.run(['bash', str(LAUNCH / script), *args],
                        capture_output=True, text=True, env=e, timeout=60)


TPU_ARGS = ['--name=vit-pod', '--zone=us-central2-b', '--accelerator=v4-32',
            '--bucket=gs://my-bucket', '--run=exp1', '--project=my-proj',
            '--', '--config=configs/vit.py:b16,cifar10',
            '--config.batch_size=1024']


def commands(out):
  return [l[2:] for l in out.splitlines() if l.startswith('+ ')]


def test_tpu_dry_run_prints_the_gcloud_commands():
  r = run('tpu_vm.sh', '--dry-run', *TPU_ARGS)
  assert r.returncode == 0, r.stderr
  for setting in ('my-proj', 'us-central2-b', 'vit-pod', 'v4-32',
                  'gs://my-bucket/vit_jax/exp1'):
    assert setting in r.stdout.split('+ ')[0]  # printed before any command
  cmds = commands(r.stdout)
  assert cmds[0] == ('gcloud compute tpus tpu-vm create vit-pod '
                     '--zone=us-central2-b --project=my-proj '
                     '--accelerator-type=v4-32 '
                     '--version=tpu-ubuntu2204-base')
  scp = [c for c in cmds if 'tpu-vm scp' in c]
  assert len(scp) == 1 and '--worker=all' in scp[0]
  ssh = [c for c in cmds if 'tpu-vm ssh' in c]
  assert len(ssh) == 2 and all('--worker=all' in c for c in ssh)
  assert 'pip install -q -r requirements.txt' in ssh[0]
  assert "jax[tpu]" in ssh[0]
  assert ('VIT_JAX_DISTRIBUTED=1 nohup python3 -m vit_jax.main '
          '--config=configs/vit.py:b16,cifar10 --config.batch_size=1024 '
          '--workdir=gs://my-bucket/vit_jax/exp1 > ~/vit_jax_logs/worker.log'
          in ssh[1])


def test_tpu_dry_run_reads_settings_from_the_environment():
  r = run('tpu_vm.sh', '--dry-run', '--run=e2', '--',
          '--config=configs/vit.py:s16,cifar10',
          env=dict(TPU_NAME='n2', TPU_ZONE='z2', TPU_ACCELERATOR='v5p-64',
                   GCS_BUCKET='gs://b2', GCP_PROJECT='p2'))
  assert r.returncode == 0, r.stderr
  assert commands(r.stdout)[0].startswith(
      'gcloud compute tpus tpu-vm create n2 --zone=z2 --project=p2 '
      '--accelerator-type=v5p-64')


def test_tpu_runs_gcloud_and_reuses_an_existing_slice(tmp_path):
  log = tmp_path / 'gcloud.log'
  bin_dir = tmp_path / 'bin'
  stub(bin_dir, 'gcloud', f'echo "$*" >> {log}; '
       '[[ "$*" == *describe* ]] && exit ${DESCRIBE_RC:-1}; exit 0')
  path = f'{bin_dir}:{BASE_PATH}'
  r = run('tpu_vm.sh', *TPU_ARGS, path=path)
  assert r.returncode == 0, r.stderr
  calls = log.read_text().splitlines()
  assert calls[0].startswith('compute tpus tpu-vm describe vit-pod')
  assert calls[1].startswith('compute tpus tpu-vm create vit-pod')
  assert sum('tpu-vm ssh' in c for c in calls) == 2
  log.unlink()
  r = run('tpu_vm.sh', *TPU_ARGS, path=path, env={'DESCRIBE_RC': '0'})
  assert r.returncode == 0, r.stderr
  assert 'reusing existing TPU VM vit-pod' in r.stdout
  assert not any('create' in c for c in log.read_text().splitlines())


@pytest.mark.parametrize('args,env,message', [
    (TPU_ARGS, {}, 'gcloud not found'),
    (['--dry-run'] + [a for a in TPU_ARGS if not a.startswith('--project')],
     {}, 'no project'),
    (['--dry-run'] + [a for a in TPU_ARGS if not a.startswith('--zone')], {},
     'no zone'),
    (['--dry-run'] + [a for a in TPU_ARGS if not a.startswith('--bucket')],
     {}, 'no bucket'),
    (['--dry-run', '--name=a', '--zone=b', '--accelerator=c', '--project=d',
      '--bucket=gs://e'], {}, 'no vit_jax.main arguments'),
    (['--dry-run', '--nmae=a'], {}, "unknown option '--nmae=a'"),
])
def test_tpu_refusals(args, env, message):
  r = run('tpu_vm.sh', *args, env=env)
  assert r.returncode != 0
  assert message in r.stderr
  assert 'gcloud compute' not in r.stdout


def test_tpu_no_project_in_gcloud_config(tmp_path):
  bin_dir = tmp_path / 'bin'
  stub(bin_dir, 'gcloud', 'exit 0')  # `config get-value project` prints ''
  args = [a for a in TPU_ARGS if not a.startswith('--project')]
  r = run('tpu_vm.sh', *args, path=f'{bin_dir}:{BASE_PATH}')
  assert r.returncode == 1 and 'no project' in r.stderr


def test_tpu_delete():
  r = run('tpu_vm_delete.sh', '--dry-run', '--name=vit-pod', '--zone=z',
          '--project=p')
  assert r.returncode == 0, r.stderr
  assert commands(r.stdout) == [
      'gcloud compute tpus tpu-vm delete vit-pod --zone=z --project=p --quiet']
  r = run('tpu_vm_delete.sh', '--name=vit-pod', '--zone=z', '--project=p')
  assert r.returncode == 1 and 'gcloud not found' in r.stderr


def test_slurm_dry_run():
  r = run('slurm.sh', '--dry-run', '--nodes=4', '--gpus-per-node=8',
          '--partition=a100', '--workdir=/shared/exp', '--',
          '--config=configs/vit.py:b16,cifar10')
  assert r.returncode == 0, r.stderr
  (cmd,) = commands(r.stdout)
  assert cmd.startswith('sbatch --job-name=vit_jax --nodes=4 '
                        '--ntasks-per-node=1 --gpus-per-node=8 ')
  assert '--partition=a100' in cmd
  assert cmd.endswith('launch/slurm.sbatch '
                      '--config=configs/vit.py:b16,cifar10 '
                      '--workdir=/shared/exp')
  assert 'srun --kill-on-bad-exit=1 launch/slurm_task.sh' in r.stdout
  r = run('slurm.sh', '--dry-run', '--per-gpu', '--nodes=2',
          '--gpus-per-node=8', '--workdir=/w', '--', '--config=c.py')
  assert '--ntasks-per-node=8' in commands(r.stdout)[0]
  assert '16 (8 per node)' in r.stdout


@pytest.mark.parametrize('args,message', [
    (['--nodes=0', '--gpus-per-node=8', '--workdir=/w', '--', 'x'],
     '--nodes must be a positive integer'),
    (['--nodes=2', '--gpus-per-node=two', '--workdir=/w', '--', 'x'],
     '--gpus-per-node must be a positive integer'),
    (['--nodes=2', '--gpus-per-node=8', '--', 'x'], 'no --workdir'),
    (['--nodes=2', '--gpus-per-node=8', '--workdir=/w', '--', 'x'],
     'sbatch not found'),
])
def test_slurm_refusals(args, message):
  r = run('slurm.sh', *args)
  assert r.returncode != 0 and message in r.stderr


def test_slurm_task_feeds_jax_distributed_from_slurm(tmp_path):
  bin_dir = tmp_path / 'bin'
  stub(bin_dir, 'scontrol', 'echo node017; echo node018')
  stub(bin_dir, 'fakepython', 'env | grep -E "^(JAX_|CUDA_VISIBLE)" | sort; '
       'echo "ARGS $*"')
  env = dict(SLURM_NTASKS='16', SLURM_PROCID='9', SLURM_LOCALID='1',
             SLURM_NTASKS_PER_NODE='8', SLURM_JOB_NODELIST='node[017-018]',
             PYTHON='fakepython')
  r = run('slurm_task.sh', '--config=c.py', path=f'{bin_dir}:{BASE_PATH}',
          env=env)
  assert r.returncode == 0, r.stderr
  lines = r.stdout.splitlines()
  assert 'JAX_COORDINATOR_ADDRESS=node017:12355' in lines
  assert 'JAX_NUM_PROCESSES=16' in lines
  assert 'JAX_PROCESS_ID=9' in lines
  assert 'CUDA_VISIBLE_DEVICES=1' in lines
  assert 'ARGS -m vit_jax.main --config=c.py' in lines
  r = run('slurm_task.sh', path=f'{bin_dir}:{BASE_PATH}')
  assert r.returncode != 0 and 'not inside a SLURM job' in r.stderr


def test_local_refuses_bad_counts():
  r = run('local.sh', 'two', '2', '--', '--config=x')
  assert r.returncode == 2 and 'positive integers' in r.stderr
