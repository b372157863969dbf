"""The toy world's procedural data: reproducible, captioned truthfully, drawn in the named colours."""
import random

import numpy as np
import pytest

from core.toyworld.data import COLORS, SHAPES, SIZE, Scene, caption, draw, make_dataset


def test_same_seed_same_data_other_seed_other_data():
    a, b, c = make_dataset(20, seed=5), make_dataset(20, seed=5), make_dataset(20, seed=6)
    assert [t for _, t, _ in a] == [t for _, t, _ in b]
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for (x, _, _), (y, _, _) in zip(a, b))
    assert [s for _, _, s in a] != [s for _, _, s in c]


def test_caption_templates_vary():
    scene = Scene(shape="star", color="orange", background="white", size="small", cx=0.5, cy=0.5, angle=0)
    texts = {caption(scene, random.Random(i)) for i in range(50)}
    assert len(texts) >= 5 and "an orange star on a white background" in texts


def test_captions_name_what_is_drawn():
    for image, text, scene in make_dataset(300, seed=1):
        assert image.size == (SIZE, SIZE) and image.mode == "RGB"
        assert scene.color != scene.background
        words = text.replace(",", "").split()
        assert scene.shape in words and scene.color in words and scene.background in words
        assert " a orange" not in text and " a a" not in text


@pytest.mark.parametrize("shape", SHAPES)
def test_shape_centre_and_corner_have_the_named_colours(shape):
    scene = Scene(shape=shape, color="red", background="blue", size="medium", cx=0.5, cy=0.5, angle=10)
    pixels = np.asarray(draw(scene)).astype(int)
    assert np.abs(pixels[32, 32] - COLORS["red"]).max() <= 2
    assert np.abs(pixels[0, 0] - COLORS["blue"]).max() <= 2
    edge = np.abs(pixels - COLORS["red"]).sum(-1) > 6
    edge &= np.abs(pixels - COLORS["blue"]).sum(-1) > 6
    assert edge.any()  # anti-aliased: some pixels lie between the two colours


def test_unknown_shape_is_refused():
    with pytest.raises(ValueError, match="shape must be one of circle, square, triangle, star, heart, cross, got 'blob'"):
        draw(Scene(shape="blob", color="red", background="blue", size="small", cx=0.5, cy=0.5, angle=0))


def test_every_colour_and_shape_appears_in_a_modest_dataset():
    scenes = [s for _, _, s in make_dataset(1000, seed=2)]
    assert {s.shape for s in scenes} == set(SHAPES)
    assert {s.color for s in scenes} == set(COLORS) == {s.background for s in scenes}
