import * as core from '@actions/core';
const token = await core.getIDToken(process.argv[2]);
core.setOutput('oidc', token);
