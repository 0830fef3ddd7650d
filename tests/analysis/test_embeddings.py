"""Known-answer tests of position-embedding similarity and patch PCA."""

import numpy as np
import pytest
import sklearn.decomposition

from vit_jax.analysis import embeddings
from vit_jax.analysis import validate


def test_one_hot_position_embeddings_give_identity():
  h, w = 3, 4
  pe = np.concatenate([np.ones((1, h * w)), np.eye(h * w)])[None]  # + cls
  sim = embeddings.posemb_similarity(pe, (h, w), num_prefix=1)
  assert sim.shape == (h, w, h, w)
  np.testing.assert_allclose(sim.reshape(h * w, h * w), np.eye(h * w),
                             atol=1e-12)


def test_similarity_is_cosine():
  rng = np.random.default_rng(0)
  pe = rng.normal(size=(1, 6, 8))
  sim = embeddings.posemb_similarity(pe, (2, 3), num_prefix=0)
  a, b = pe[0, 1], pe[0, 5]
  assert sim[0, 1, 1, 2] == pytest.approx(
      a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_wrong_grid_names_sizes():
  with pytest.raises(validate.AnalysisError, match='5 patch rows.*2x3'):
    embeddings.posemb_similarity(np.zeros((1, 6, 4)), (2, 3), num_prefix=1)


def test_patch_pca_matches_sklearn():
  rng = np.random.default_rng(0)
  # Filters with a dominant direction so the components are well separated.
  kernel = rng.normal(size=(4, 4, 3, 64)) * np.linspace(3, 0.1, 48).reshape(
      4, 4, 3, 1)
  comp, var = embeddings.patch_pca(kernel, 5)
  ref = sklearn.decomposition.PCA(5).fit(kernel.reshape(48, 64).T)
  assert comp.shape == (5, 4, 4, 3)
  np.testing.assert_allclose(var, ref.explained_variance_ratio_, rtol=1e-6)
  for c, r in zip(comp.reshape(5, -1), ref.components_):
    assert abs(c @ r) == pytest.approx(1.0, abs=1e-6)  # equal up to sign


def test_patch_pca_component_count_range():
  with pytest.raises(validate.AnalysisError, match=r'allowed 1\.\.12'):
    embeddings.patch_pca(np.zeros((2, 2, 3, 20)), 13)
