"""The tile autoencoder: one latent per game tile, so a one-tile move is a one-cell shift of the latent grid."""
import numpy as np
import pytest
import torch
from conftest import randomize

from worldsim.autoencoder import LatentCodec, build_autoencoder, ae_config, latent_shape, make_autoencoder, training_loss


def test_tile_latents_shift_with_the_tiles():
    torch.manual_seed(0)
    ae = randomize(make_autoencoder("tile7_tiny", frame_shape=(64, 64, 3)), std=0.3).eval()
    codec = LatentCodec(ae)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    y = x.copy()
    y[:, :, 0:56] = x[:, :, 7:63]  # the view moves one 7-pixel tile to the left (Crafter's grid: 9 tiles of 7)
    zx, zy = codec.encode(torch.as_tensor(x)), codec.encode(torch.as_tensor(y))
    assert zx.shape == (1, 4, 9, 9)
    # one residual block with a 3x3 conv sees one cell either side: interior cells are an exact shift
    torch.testing.assert_close(zy[..., 1:7], zx[..., 2:8], rtol=0, atol=1e-5)
    # a shift that is not a whole tile is not a cell shift
    y2 = x.copy()
    y2[:, :, 0:59] = x[:, :, 4:63]
    assert (codec.encode(torch.as_tensor(y2))[..., 1:7] - zx[..., 2:8]).abs().max() > 1e-2


def test_tile_autoencoder_learns_and_round_trips_its_config():
    torch.manual_seed(0)
    ae = make_autoencoder("tile7_tiny", frame_shape=(64, 64, 3))
    # frames drawn from three 7x7 tile textures on a 9x9 grid, as a tile game draws them
    tiles = torch.rand(3, 3, 7, 7) * 2 - 1
    idx = torch.randint(0, 3, (4, 9, 9))
    x = torch.full((4, 3, 64, 64), -1.0)
    x[:, :, :63, :63] = tiles[idx].permute(0, 3, 1, 4, 2, 5).reshape(4, 3, 63, 63)
    opt = torch.optim.AdamW(ae.parameters(), 3e-3)
    first = None
    for _ in range(60):
        rec, loss = training_loss(ae, x, 0.0)
        first = first if first is not None else rec.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert rec.item() < 0.5 * first
    again = build_autoencoder(ae_config(ae))
    again.load_state_dict(ae.state_dict())
    z = ae.encode_latents(x)
    torch.testing.assert_close(again.decode_latents(z), ae.decode_latents(z))
    # the pixels outside the 9x9 tile grid (last row and column) come out as one learned colour
    out = ae.decode_latents(z)
    assert torch.allclose(out[:, :, 63, :], ae.border.view(1, 3, 1).expand(4, 3, 64))


def test_tile_autoencoder_names_a_wrong_frame_size():
    ae = make_autoencoder("tile7_tiny", frame_shape=(64, 64, 3))
    assert latent_shape(ae, 64, 64) == (4, 9, 9)
    with pytest.raises(ValueError, match="tied to \\(64, 64\\)"):
        latent_shape(ae, 96, 128)
    with pytest.raises(ValueError, match="needs the frame shape"):
        make_autoencoder("tile7_tiny")
    with pytest.raises(ValueError, match="unknown autoencoder preset"):
        make_autoencoder("tile9")
    assert latent_shape(make_autoencoder("tiny"), 64, 96) == (4, 16, 24)
    with pytest.raises(ValueError, match="multiples of 4"):
        latent_shape(make_autoencoder("tiny"), 62, 64)


def test_patch_autoencoder_without_a_tied_size_takes_any_multiple_of_its_patch():
    torch.manual_seed(0)
    ae = make_autoencoder("patch8_tiny").eval()  # no frame shape needed: not tied to one
    assert latent_shape(ae, 96, 128) == (4, 12, 16) and latent_shape(ae, 64, 96) == (4, 8, 12)
    with pytest.raises(ValueError, match="positive multiples of 8"):
        latent_shape(ae, 100, 128)
    again = build_autoencoder(ae_config(ae))  # frame_size None survives the bundle's JSON config
    assert again.config.frame_size is None
    codec = LatentCodec(ae)
    for H, W in ((96, 128), (64, 96)):
        frames = torch.randint(0, 256, (2, H, W, 3), dtype=torch.uint8)
        z = codec.encode(frames)
        assert z.shape == (2, 4, H // 8, W // 8) and codec.decode(z).shape == (2, H, W, 3)
    # convolutional: the same 8x8-aligned content gives the same latents at either size (away from edges)
    big = torch.randint(0, 256, (1, 96, 128, 3), dtype=torch.uint8)
    torch.testing.assert_close(codec.encode(big[:, :64, :96])[..., 2:6, 2:10], codec.encode(big)[..., 2:6, 2:10])
