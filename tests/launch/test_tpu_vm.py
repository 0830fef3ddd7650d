"""Tests of launch/tpu_vm.sh and launch/tpu_vm_delete.sh against a stub
`gcloud` that records its arguments (no cloud is touched)."""

import shlex
import tarfile

import pytest

from tests.launch import stubs

SETTINGS = ['--name=vit-pod', '--zone=us-central2-b', '--accelerator=v4-32',
            '--bucket=gs://my-bucket', '--project=my-proj', '--run=ft1',
            '--version=tpu-ubuntu2204-base']
MAIN = ['--', '--config=configs/vit.py:b16,cifar10',
        '--config.total_steps=100']
WORKDIR = 'gs://my-bucket/vit_jax/ft1'
WHERE = ['--zone=us-central2-b', '--project=my-proj']

# `gcloud`: `describe` fails (no such TPU) unless STUB_TPU_EXISTS=1;
# `config get-value project` prints STUB_PROJECT.
GCLOUD = '''
a = sys.argv[1:]
if a[:3] == ["config", "get-value", "project"]:
  print(os.environ.get("STUB_PROJECT", ""))
elif "describe" in a:
  sys.exit(0 if os.environ.get("STUB_TPU_EXISTS") == "1" else 1)
'''


def _expected(tarball):
  remote_main = ('cd ~/vit_jax && mkdir -p ~/vit_jax_logs && '
                 'nohup python3 -m vit_jax.main --distributed '
                 '--config=configs/vit.py:b16,cifar10 '
                 f'--config.total_steps=100 --workdir={WORKDIR} '
                 '> ~/vit_jax_logs/worker.log 2>&1 &')
  return [
      ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create', 'vit-pod', *WHERE,
       '--accelerator-type=v4-32', '--version=tpu-ubuntu2204-base'],
      ['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp', tarball,
       'vit-pod:~/vit_jax_code.tgz', '--worker=all', *WHERE],
      ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'vit-pod',
       '--worker=all', *WHERE,
       '--command=mkdir -p ~/vit_jax && tar -xzf ~/vit_jax_code.tgz -C '
       '~/vit_jax && cd ~/vit_jax && python3 -m pip install -q . && '
       "python3 -m pip install -q -U 'jax[tpu]'"],
      ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'vit-pod',
       '--worker=all', *WHERE, f'--command={remote_main}'],
  ]


def test_dry_run_prints_exact_commands_and_calls_nothing(tmp_path):
  env = stubs.make_env(tmp_path, {'gcloud': GCLOUD})
  r = stubs.run('tpu_vm.sh', ['--dry-run', *SETTINGS, *MAIN], env)
  assert r.returncode == 0, r.stderr
  printed = [shlex.split(l) for l in stubs.plus_lines(r.stdout)]
  gcloud_cmds = [c for c in printed if c[0] == 'gcloud']
  assert gcloud_cmds == _expected(str(tmp_path / 'vit_jax_code_ft1.tgz'))
  assert stubs.calls(env) == []  # nothing was run
  assert not (tmp_path / 'vit_jax_code_ft1.tgz').exists()
  # Every setting is printed before the first command.
  head = r.stdout.split('\n+ ', 1)[0]
  for value in ('my-proj', 'us-central2-b', 'vit-pod', 'v4-32',
                'tpu-ubuntu2204-base', WORKDIR, 'dry run      yes'):
    assert value in head
  assert 'worker.log' in r.stdout.split('\n+ ')[-1]  # how to follow logs


def test_real_run_calls_gcloud_in_order_and_ships_the_code(tmp_path):
  env = stubs.make_env(tmp_path, {'gcloud': GCLOUD})
  r = stubs.run('tpu_vm.sh', [*SETTINGS, *MAIN], env)
  assert r.returncode == 0, r.stderr
  tarball = tmp_path / 'vit_jax_code_ft1.tgz'
  got = stubs.calls(env)
  assert got[0][:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'describe']
  assert got[1:] == _expected(str(tarball))
  with tarfile.open(tarball) as t:
    names = set(t.getnames())
  assert {'vit_jax/main.py', 'launch/tpu_vm.sh'} <= names
  assert not any(n.startswith('.git/') for n in names)


def test_existing_slice_is_reused(tmp_path):
  env = stubs.make_env(tmp_path, {'gcloud': GCLOUD}, STUB_TPU_EXISTS='1')
  r = stubs.run('tpu_vm.sh', [*SETTINGS, *MAIN], env)
  assert r.returncode == 0, r.stderr
  assert 'reusing existing TPU VM vit-pod' in r.stdout
  verbs = [c[4] for c in stubs.calls(env)]
  assert verbs == ['describe', 'scp', 'ssh', 'ssh']


def test_settings_from_environment_and_gcloud_project(tmp_path):
  env = stubs.make_env(tmp_path, {'gcloud': GCLOUD}, STUB_PROJECT='cfg-proj',
                       TPU_NAME='envtpu', TPU_ZONE='europe-west4-a',
                       TPU_ACCELERATOR='v3-8', GCS_BUCKET='gs://b2/')
  r = stubs.run('tpu_vm.sh', ['--dry-run', '--run=r2', *MAIN], env)
  assert r.returncode == 0, r.stderr
  create = shlex.split(stubs.plus_lines(r.stdout)[0])
  assert create == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create', 'envtpu',
                    '--zone=europe-west4-a', '--project=cfg-proj',
                    '--accelerator-type=v3-8',
                    '--version=tpu-ubuntu2204-base']
  assert '--workdir=gs://b2/vit_jax/r2' in r.stdout
  # Only the read of the configured project reached gcloud.
  assert stubs.calls(env) == [['gcloud', 'config', 'get-value', 'project']]


@pytest.mark.parametrize('args,stub,match', [
    # No gcloud on PATH and not a dry run.
    (SETTINGS + MAIN, None, 'gcloud not found'),
    # gcloud has no project configured.
    ([a for a in SETTINGS if not a.startswith('--project')] + MAIN,
     GCLOUD, 'no project: pass --project=P'),
    ([a for a in SETTINGS if not a.startswith('--bucket')] + MAIN,
     GCLOUD, 'no bucket: pass --bucket=gs://BUCKET'),
    ([a for a in SETTINGS if not a.startswith('--zone')] + MAIN,
     GCLOUD, 'no zone'),
    ([a for a in SETTINGS if not a.startswith('--accel')] + MAIN,
     GCLOUD, 'no accelerator type'),
    (SETTINGS, GCLOUD, "no vit_jax.main arguments after '--'"),
    (SETTINGS + MAIN + ['--workdir=/tmp/x'], GCLOUD, 'do not pass --workdir'),
    (SETTINGS + ['--bogus'] + MAIN, GCLOUD, "unknown option '--bogus'"),
])
def test_refusals_name_what_is_missing(tmp_path, args, stub, match):
  env = stubs.make_env(tmp_path, {'gcloud': stub} if stub else {})
  r = stubs.run('tpu_vm.sh', args, env)
  assert r.returncode != 0
  assert match in r.stderr
  assert len(r.stderr.strip().splitlines()) == 1
  assert not any('create' in c for c in stubs.calls(env))


def test_delete(tmp_path):
  env = stubs.make_env(tmp_path, {'gcloud': GCLOUD})
  args = ['--name=vit-pod', '--zone=us-central2-b', '--project=my-proj']
  r = stubs.run('tpu_vm_delete.sh', ['--dry-run', *args], env)
  assert r.returncode == 0, r.stderr
  want = ['gcloud', 'compute', 'tpus', 'tpu-vm', 'delete', 'vit-pod', *WHERE,
          '--quiet']
  assert [shlex.split(l) for l in stubs.plus_lines(r.stdout)] == [want]
  assert stubs.calls(env) == []
  r = stubs.run('tpu_vm_delete.sh', args, env)
  assert r.returncode == 0, r.stderr
  assert stubs.calls(env) == [want]
def test_delete_refusals(tmp_path):
  no_gcloud = stubs.make_env(tmp_path)
  r = stubs.run('tpu_vm_delete.sh', ['--name=a', '--zone=z', '--project=p'],
                no_gcloud)
  assert r.returncode != 0 and 'gcloud not found' in r.stderr
  env = stubs.make_env(tmp_path, {'gcloud': GCLOUD})
  r = stubs.run('tpu_vm_delete.sh', ['--name=a', '--zone=z'], env)
  assert r.returncode != 0 and 'no project' in r.stderr
  r = stubs.run('tpu_vm_delete.sh', ['--zone=z', '--project=p'], env)
  assert r.returncode != 0 and 'no TPU name' in r.stderr
  assert not any('delete' in c for c in stubs.calls(env))
