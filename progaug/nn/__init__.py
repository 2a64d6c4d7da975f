"""Neural networks: the HAS attention block and the ADM-style U-Net (paper section 2.2)."""

from progaug.nn.attention import AttentionBlock
from progaug.nn.unet import UNet

__all__ = ["AttentionBlock", "UNet"]
