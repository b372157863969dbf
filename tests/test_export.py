"""The run's x_t | x0 strip as GIF and MP4."""
import imageio.v3 as iio
from PIL import Image

from core import export


def frames(n=12, size=(61, 40)):
    return [export.pair(Image.new("RGB", size, (20 * i, 0, 0)), Image.new("RGB", size, (0, 20 * i, 0)))
            for i in range(n)]


def test_pair_puts_x_t_left_and_x0_right():
    p = export.pair(Image.new("RGB", (10, 10), "red"), Image.new("RGB", (10, 10), "blue"))
    assert p.size == (24, 10)
    assert p.getpixel((0, 0)) == (255, 0, 0) and p.getpixel((23, 9)) == (0, 0, 255)
    assert p.getpixel((11, 5)) == (255, 255, 255)


def test_gif_and_mp4_hold_every_frame(tmp_path):
    strip = frames()
    gif = Image.open(export.write_gif(strip, tmp_path / "run.gif"))
    assert gif.n_frames == 12 and gif.size == strip[0].size
    video = iio.imread(export.write_mp4(strip, tmp_path / "run.mp4"), plugin="FFMPEG")
    assert video.shape == (12, 40, 126, 3)  # odd width 126 stays; 61+4+61 = 126, height 40
    assert video[-1, 20, 70, 1] > 150 and video[0, 20, 70, 1] < 60  # x0 half goes from black to green
