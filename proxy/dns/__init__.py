"""DNS proxy: answers mesh names locally and forwards everything else upstream."""
