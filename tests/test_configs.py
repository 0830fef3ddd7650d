"""Tests of configs/*.py and vit_jax.config_lib: every preset loads and
validates; bad values give one-line errors naming the key and the allowed
values."""

import os
import pathlib
import shutil
import sys

import pytest

from configs import common
from configs import cpu
from configs import mixer
from configs import pretrain
from configs import vit
from vit_jax import config_lib


@pytest.mark.parametrize('model', sorted(common.MODELS))
def test_every_model_preset_validates(model):
  config = vit.get_config(f'{model},cifar10')
  config_lib.validate(config, num_devices=8)
  assert config.model_name == common.MODELS[model][0]


@pytest.mark.parametrize('dataset', sorted(common.DATASETS))
def test_every_dataset_preset_validates(dataset):
  config = vit.get_config(f'b16,{dataset}')
  config_lib.validate(config, num_devices=8)
  for k, v in common.DATASETS[dataset]['data'].items():
    assert config.data[k] == v


@pytest.mark.parametrize('name', cpu.EXPERIMENTS)
def test_cpu_experiments_validate(name):
  config = cpu.get_config(name)
  config_lib.validate(config, num_devices=1)
  pp_train, pp_eval = config_lib.resolve_pp(config)
  assert '{' not in pp_train + pp_eval
  assert f'({config.image_size})' in pp_train


def test_other_config_files():
  m = mixer.get_config('mixer_mu16,cifar10')
  assert m.model_name == 'Mixer-mu_16'
  assert mixer.get_config().model_name == 'Mixer-B_16'
  p = pretrain.get_config('s16,imagenet2012,res=128')
  assert p.optim.name == 'adamw' and p.image_size == 128
  assert 'inception_crop(128)' in config_lib.resolve_pp(p)[0]
  for c in (m, p):
    config_lib.validate(c, num_devices=8)


def test_argument_overrides_and_resize_follows_image_size():
  c = vit.get_config('ti16,cifar10,res=160,steps=50,batch=64,lr=0.1')
  assert (c.image_size, c.total_steps, c.batch_size) == (160, 50, 64)
  assert c.optim.base_lr == 0.1
  assert config_lib.resolve_pp(c)[0].startswith(
      'decode|resize(182)|random_crop(160)|')
  c.image_size = 224  # as --config.image_size=224 does
  assert config_lib.resolve_pp(c)[0].startswith(
      'decode|resize(256)|random_crop(224)|')


@pytest.mark.parametrize('arg, match', [
    ('b16,imagenet21k', r"'imagenet21k' is neither a model \(mu4, .*\) nor a "
     r'dataset \(cifar10, '),
    ('b16,cifar10,depth=3', r"unknown key 'depth'; allowed: res, steps"),
])
def test_bad_arguments(arg, match):
  with pytest.raises(ValueError, match=match):
    vit.get_config(arg)


def test_bad_cpu_experiment():
  with pytest.raises(ValueError, match=r'unknown experiment; allowed: digits'):
    cpu.get_config('imagenet')


def _bad(**kw):
  c = vit.get_config('mu16,synthetic')
  for k, v in kw.items():
    config_lib.set_value(c, k.replace('__', '.'), v)
  return c


@pytest.mark.parametrize('kw, match', [
    (dict(trainer='finetune'), r"config.trainer='finetune'; allowed: train, "
     r'evaluate, inference_time'),
    (dict(model_name='ViT-X_16'), r"config.model_name: unknown model name "
     r"'ViT-X_16'; examples of valid names: ViT-Ti_16"),
    (dict(batch_size=12), r'config.batch_size=12 \(per micro-batch 12\) is '
     r'not divisible by the 8 devices'),
    (dict(eval_batch_size=100), r'eval_batch_size=100 is not divisible by '
     r'the 8 devices'),
    (dict(accum_steps=3), r'batch_size=512 is not divisible by '
     r'config.accum_steps=3'),
    (dict(warmup_steps=200, total_steps=100), r'warmup_steps=200 exceeds'),
    (dict(optim__name='sgdw'), r"optim.name='sgdw'; allowed: sgd, adamw"),
    (dict(optim__schedule='step'), r"schedule='step'; allowed: cosine"),
    (dict(optim__momentum_dtype='float16'), r'allowed: float32, bfloat16'),
    (dict(dtype='float16'), r"config.dtype='float16'; allowed: float32"),
    (dict(partition_rules='x'), r"partition_rules='x'; allowed: default"),
    (dict(mesh__tensor=3), r'8 devices are not divisible by 3'),
    (dict(data__pp_train='resize({size})'), r"unknown placeholder 'size'"),
    (dict(batch_size=0), r'config.batch_size=0 must be positive'),
    (dict(model__mlp_activation='gelu'), r"config.model.mlp_activation="
     r"'gelu'; allowed: gelu_tanh, gelu_erf"),
])
def test_validate_errors_are_one_line(kw, match):
  with pytest.raises(ValueError, match=match) as e:
    config_lib.validate(_bad(**kw), num_devices=8)
  assert '\n' not in str(e.value)


def test_unknown_model_option():
  c = vit.get_config('mu16,synthetic')
  with c.unlocked():
    c.model.depth = 3
  with pytest.raises(ValueError, match=r"config.model: unknown option\(s\) "
                     r"\['depth'\] for mu/16; allowed: .*num_layers"):
    config_lib.validate(c, 8)


def test_mlp_activation_is_recorded_and_kept_by_presets():
  """The released checkpoints' GELU form is in every transformer config (so
  config.json records it); a ResNet has no MLP activation."""
  for arg in ('b16,cifar10', 'mixer_b16,cifar10', 'r26s32,cifar10'):
    assert vit.get_config(arg).model.mlp_activation == 'gelu_tanh'
  assert 'mlp_activation' not in vit.get_config('bit_r26,cifar10').model
  assert cpu.get_config('digits').model.mlp_activation == 'gelu_tanh'
  c = vit.get_config('ti16,cifar10')
  config_lib.set_value(c, 'model.mlp_activation', 'gelu_erf')
  config_lib.validate(c, 8)


# --------------------------------------------------------------------------
# Patch sizes: released or preset ones only, unless asked for.


@pytest.mark.parametrize('name, size', [
    ('B/16', 16), ('ViT-B_8', 8), ('ViT-H_14', 14), ('R26+S/32', 32),
    ('R_Ti/16', 16), ('Mixer-B_16', 16), ('ViT-S_16-gap-norep', 16),
    ('mu/4', 4), ('BiT-R50', None)])
def test_patch_size_of_registry_names(name, size):
  assert config_lib.patch_size(name) == size


def test_every_preset_and_example_name_has_an_allowed_patch_size():
  from vit_jax import models  # pylint: disable=g-import-not-at-top
  allowed = config_lib.RELEASED_PATCH_SIZES + config_lib.PRESET_PATCH_SIZES
  names = [n for n, _ in common.MODELS.values()] + list(models.EXAMPLE_NAMES)
  for name in names:
    assert config_lib.patch_size(name) in allowed + (None,), name
  # The preset-only size is used by a preset, so the allowance is needed.
  assert {config_lib.patch_size(n) for n, _ in common.MODELS.values()} >= set(
      config_lib.PRESET_PATCH_SIZES)


@pytest.mark.parametrize('name', ['B/17', 'Ti/15', 'ViT-L_20', 'Mixer-B_12'])
def test_unreleased_patch_size_is_refused_unless_allowed(name):
  c = vit.get_config('mu16,synthetic')
  config_lib.set_value(c, 'model_name', name)
  with pytest.raises(ValueError) as e:
    config_lib.validate(c, num_devices=8)
  p = config_lib.patch_size(name)
  assert str(e.value) == (
      f'config.model_name={name!r}: patch size {p} is none of the released '
      '(8, 14, 16, 32) or preset (4) sizes; set '
      '--config.allow_custom_model=True to train it anyway')
  config_lib.set_value(c, 'allow_custom_model', 'True')
  config_lib.validate(c, num_devices=8)


def test_runs_recorded_before_the_key_still_resume():
  from vit_jax.training import config_record  # pylint: disable=g-import-not-at-top
  c = vit.get_config('mu16,synthetic')
  recorded = config_record.as_dict(c)
  del recorded['allow_custom_model']
  assert config_record.check_resume(c, recorded, '/w') == []


# --------------------------------------------------------------------------
# Config files: found from any directory; `configs` is their own package.


def test_config_file_from_another_directory(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert config_lib.resolve_config_file('configs/cpu.py:digits') == (
      f'{config_lib.CONFIGS_DIR / "cpu.py"}:digits')
  assert config_lib.CONFIGS_DIR == pathlib.Path(common.__file__).parent
  # A file of the working directory wins.
  (tmp_path / 'configs').mkdir()
  (tmp_path / 'configs' / 'cpu.py').write_text('')
  assert config_lib.resolve_config_file('configs/cpu.py:x') == (
      'configs/cpu.py:x')
  with pytest.raises(ValueError) as e:
    config_lib.resolve_config_file('configs/nope.py:b16')
  assert str(e.value) == (
      f'--config=configs/nope.py:b16: no such config file ({tmp_path}/'
      f'configs/nope.py nor {config_lib.CONFIGS_DIR}/nope.py); available: '
      'configs/cpu.py, configs/inference_time.py, configs/mixer.py, '
      'configs/pretrain.py, configs/vit.py')


@pytest.fixture
def own_configs_modules():
  """Restores this process's `configs` modules after the test."""
  saved = {k: v for k, v in sys.modules.items()
           if k == 'configs' or k.startswith('configs.')}
  yield
  for k in [k for k in sys.modules if k == 'configs' or
            k.startswith('configs.')]:
    del sys.modules[k]
  sys.modules.update(saved)


def test_a_copy_of_configs_imports_its_own_siblings(tmp_path,
                                                     own_configs_modules):
  """As when installed (vit_jax/configs): `from configs import common` in
  the copy's cpu.py gives the copy's common.py, not the checkout's."""
  copy = tmp_path / 'site' / 'vit_jax' / 'configs'
  shutil.copytree(config_lib.CONFIGS_DIR, copy,
                  ignore=shutil.ignore_patterns('__pycache__'))
  with open(copy / 'common.py', 'a') as f:
    f.write('\nMARK = "copy"\n')
  module = config_lib.load_config_module(str(copy / 'cpu.py'))
  assert module.common.MARK == 'copy'
  assert pathlib.Path(sys.modules['configs.common'].__file__) == (
      copy / 'common.py')
  assert module.get_config('digits').model_name == 'mu/4'
  # Installed inside the package, the data folder is found from the cwd.
  assert module.common.SHARED_DATA == os.environ.get(
      'VIT_JAX_SHARED_DATA', str(pathlib.Path.cwd().parent / 'shared' / 'data'))
