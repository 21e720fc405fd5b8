"""From a finished job to a message in its channel.

fetch: download a result image safely. fit: make images fit Discord's upload limit.
texts: what the bot writes about a job. publisher: the tracker's Publisher, posting through REST.
"""
