"""vit_jax.perf.hooks: the seam from `config.perf` to the models' hooks, and
`config.perf`'s validation."""

import ml_collections
import pytest

from configs import common
from vit_jax import config_lib
from vit_jax import models
from vit_jax.perf import attention
from vit_jax.perf import hooks


def test_config_block_has_every_knob_with_its_default():
  assert common.perf_config().to_dict() == hooks.defaults()
  assert common.get_config().perf.to_dict() == hooks.defaults()
  from configs import inference_time  # pylint: disable=g-import-not-at-top
  assert inference_time.get_config('Ti/16').perf.to_dict() == hooks.defaults()


@pytest.mark.parametrize('platform', ['gpu', 'tpu'])
def test_stock_off_cpu_unless_asked(platform):
  for name in ('B/16', 'R26+S/32', 'Mixer-B/16', 'BiT-R26'):
    assert hooks.model_overrides({}, platform, 1, name) == {}
    assert hooks.model_overrides(hooks.defaults(), platform, 8, name) == {}
  asked = hooks.model_overrides({'attention': 'cudnn',
                                 'cudnn_seq_multiple': 64}, platform, 1,
                                'B/16')
  assert asked == {'attention_fn': attention.cudnn(64)}
  # a CPU kernel is never used elsewhere, even when asked for
  assert hooks.model_overrides({'cpu_gemm': 'on'}, platform, 1, 'B/16') == {}


def test_auto_on_cpu_is_the_measured_default():
  assert hooks.resolve({}, 'cpu', 1) == dict(hooks.defaults(),
                                             **hooks.CPU_DEFAULTS)
  # several CPU devices (sharded operands): the stock path
  assert hooks.model_overrides({}, 'cpu', 8, 'B/16') == {}


def test_overrides_build_models_of_every_family():
  """Only the hooks a model has are returned, and they build."""
  perf = {'attention': 'cudnn'}
  assert 'attention_fn' not in hooks.model_overrides(perf, 'gpu', 1,
                                                     'Mixer-B/16')
  for name in ('mu/16', 'Mixer-mu_16', 'BiT-R8', 'R26+S/32'):
    kw = hooks.model_overrides(perf, 'gpu', 1, name)
    models.get_model(name, **kw)
  assert models.get_model('B/16', **hooks.model_overrides(
      perf, 'gpu', 1, 'B/16')).attention_fn is attention.cudnn(8)


@pytest.mark.parametrize('perf,match', [
    ({'attention': 'flash'}, r"config.perf.attention='flash'; allowed: auto"),
    ({'microbatches': -1}, r'config.perf.microbatches=-1 must be an integer'),
    ({'cudnn_seq_multiple': 0}, r'cudnn_seq_multiple=0 must be an integer'),
    ({'cpu_gemm': True}, r'config.perf.cpu_gemm=True; allowed'),
    ({'speed': 'max'}, r"config.perf: unknown key 'speed'; allowed: "),
])
def test_validate_one_line_errors(perf, match):
  with pytest.raises(ValueError, match=match) as e:
    hooks.validate(perf)
  assert '\n' not in str(e.value)


def test_config_lib_validates_perf():
  c = common.get_config()
  config_lib.validate(c)
  c.perf.host_malloc = 'always'
  with pytest.raises(ValueError, match="config.perf.host_malloc='always'"):
    config_lib.validate(c)
  c = common.get_config()
  c.batch_size, c.perf.microbatches = 512, 3
  with pytest.raises(ValueError, match='config.perf.microbatches=3 does not '
                     'divide the micro-batch of 512'):
    config_lib.validate(c)
  c = common.get_config()
  del c.perf
  with pytest.raises(ValueError, match='config.perf is missing'):
    config_lib.validate(c)


def test_recorded_in_config_json_and_free_on_resume(tmp_path):
  """config.perf is part of the record, and changing it does not refuse a
  resume (how a step is computed, not what)."""
  from vit_jax.training import config_record  # pylint: disable=g-import-not-at-top
  c = common.get_config()
  recorded = config_record.as_dict(c)
  assert recorded['perf'] == hooks.defaults()
  c2 = ml_collections.ConfigDict(c.to_dict())
  c2.perf.microbatches = 2
  c2.perf.attention = 'einsum'
  assert config_record.check_resume(c2, recorded, str(tmp_path)) == []
  c2.seed = 1  # a key that does change the run still refuses it
  with pytest.raises(ValueError, match='seed 0 -> 1'):
    config_record.check_resume(c2, recorded, str(tmp_path))
