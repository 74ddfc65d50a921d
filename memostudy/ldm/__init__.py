"""The generative model under study: a 3D latent diffusion model built from MONAI's nets.

:mod:`.config` holds the LDM config and its presets; :mod:`.autoencoder` the ``AutoencoderKL`` task
(L1 + KL) and latent statistics; :mod:`.diffusion` the ``DiffusionModelUNet`` task and MONAI schedulers;
:mod:`.run` trains both stages through :func:`memostudy.training.fit` and loads a trained run;
:mod:`.sampling` draws synthetic volumes (DDPM or DDIM) and writes them as NIfTI.
"""
